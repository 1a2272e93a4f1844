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
  windows(step * batch, batch, batch, inputs, targets);
}

void TokenWindows::windows(int64_t first, int64_t count, int64_t batch, std::vector<int32_t>& inputs,
                           std::vector<int32_t>& targets) const {
  if (first < 0 || count < 0 || batch < 1) fail("token windows: first {}, count {}, batch {}", first, count, batch);
  inputs.resize(size_t(count * seq_));
  targets.resize(size_t(count * seq_));
  const int64_t windows = n_tokens_ - seq_;  // valid start offsets: [0, windows)
  // Random windows: batch number k / batch draws its windows, in order, from a stream seeded by
  // (seed, that number).
  std::mt19937_64 rng;
  int64_t seeded_for = -1;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t k = first + i;
    int64_t start;
    if (order_ == WindowOrder::Sequential) {
      // Window k covers tokens[k·seq, k·seq + seq]; past the end, start again from the top.
      const int64_t per_file = windows / seq_ + (windows % seq_ != 0);
      start = (k % std::max<int64_t>(per_file, 1)) * seq_;
    } else {
      if (seeded_for != k / batch) {
        seeded_for = k / batch;
        rng.seed(seed_ ^ (0x9E3779B97F4A7C15ull * uint64_t(seeded_for + 1)));
        rng.discard(uint64_t(k % batch));  // the earlier windows of the batch, another rank's
      }
      start = int64_t(rng() % uint64_t(windows));
    }
    for (int64_t t = 0; t < seq_; ++t) {
      inputs[size_t(i * seq_ + t)] = int32_t(data_[start + t]);
      targets[size_t(i * seq_ + t)] = int32_t(data_[start + t + 1]);
    }
  }
}

}  // namespace deepmoe
