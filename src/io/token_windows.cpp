#include "io/token_windows.h"

#include "core/error.h"

namespace deepmoe {

TokenWindows::TokenWindows(const std::string& path, int64_t seq, WindowOrder order, uint64_t seed)
    : file_(std::make_unique<MappedFile>(path)), seq_(seq), order_(order), seed_(seed) {
  const auto bytes = file_->bytes();
  if (bytes.size() % 4 != 0) fail("{}: {} bytes is not a whole number of uint32 tokens", path, bytes.size());
  data_ = reinterpret_cast<const uint32_t*>(bytes.data());
  n_tokens_ = int64_t(bytes.size() / 4);
  if (seq < 1) fail("--seq must be >= 1");
  if (n_tokens_ < seq + 1) fail("{}: {} tokens, fewer than --seq + 1 = {}", path, n_tokens_, seq + 1);
}

void TokenWindows::batch(int64_t step, int64_t batch, std::vector<int32_t>& inputs,
                         std::vector<int32_t>& targets) const {
  inputs.resize(size_t(batch * seq_));
  targets.resize(size_t(batch * seq_));
  const int64_t windows = n_tokens_ - seq_;  // valid start offsets: [0, windows)
  std::mt19937_64 rng(seed_ ^ (0x9E3779B97F4A7C15ull * uint64_t(step + 1)));
  for (int64_t b = 0; b < batch; ++b) {
    int64_t start;
    if (order_ == WindowOrder::Sequential) {
      // Window k covers tokens[k·seq, k·seq + seq]; past the end, start again from the top.
      const int64_t per_file = windows / seq_ + (windows % seq_ != 0);
      start = ((step * batch + b) % std::max<int64_t>(per_file, 1)) * seq_;
    } else {
      start = int64_t(rng() % uint64_t(windows));
    }
    for (int64_t t = 0; t < seq_; ++t) {
      inputs[size_t(b * seq_ + t)] = int32_t(data_[start + t]);
      targets[size_t(b * seq_ + t)] = int32_t(data_[start + t + 1]);
    }
  }
}

}  // namespace deepmoe
