#include "train/training_data.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "core/error.h"

namespace deepmoe::train {

std::vector<DataSource> parse_data_sources(const std::string& text) {
  std::vector<DataSource> sources;
  size_t begin = 0;
  while (begin <= text.size()) {
    const size_t end = std::min(text.find(',', begin), text.size());
    DataSource s{text.substr(begin, end - begin), 1.0};
    if (const size_t colon = s.path.rfind(':'); colon != std::string::npos) {
      const std::string weight = s.path.substr(colon + 1);
      char* rest = nullptr;
      s.weight = std::strtod(weight.c_str(), &rest);
      if (weight.empty() || *rest != '\0' || !(s.weight > 0) || !std::isfinite(s.weight))
        fail("--data {}: the weight after ':' must be a positive number, found '{}'", text, weight);
      s.path.resize(colon);
    }
    if (s.path.empty()) fail("--data {}: an empty file name", text);
    sources.push_back(s);
    begin = end + 1;
  }
  return sources;
}

TokenWindowData::TokenWindowData(const std::string& data, const std::string& val_path, int64_t seq, int64_t batch,
                                 WindowOrder order, uint64_t seed)
    : val_(val_path.empty() ? nullptr : std::make_unique<TokenWindows>(val_path, seq, WindowOrder::Sequential, 0)),
      seq_(seq),
      batch_(batch),
      seed_(seed) {
  const std::vector<DataSource> sources = parse_data_sources(data);
  if (sources.size() > 1 && order == WindowOrder::Sequential)
    fail("--order sequential reads one file in order; a mixture of {} files draws its windows at random",
         sources.size());
  double total = 0;
  for (const DataSource& s : sources) {
    sources_.emplace_back(s.path, seq, order, seed);
    total += s.weight;
    cumulative_.push_back(total);
  }
  for (double& c : cumulative_) c /= total;
  // The whole validation file once (sequential windows), up to 32 batches.
  if (val_) validation_batches_ = std::clamp<int64_t>((val_->tokens() - 1) / (seq_ * batch_), 1, 32);
}

MicroBatch TokenWindowData::train_batch(int64_t first, int64_t count, int64_t step_examples) {
  MicroBatch m;
  if (sources_.size() == 1) {
    sources_[0].windows(first, count, batch_, m.inputs, m.targets);
  } else {
    std::vector<int32_t> inputs, targets;
    for (int64_t k = first; k < first + count; ++k) {
      // A uniform draw from (seed, k) alone (SplitMix64), then the file it falls in.
      uint64_t z = seed_ * 0x9E3779B97F4A7C15ull + uint64_t(k) + 0x632BE59BD9B4E019ull;
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      z ^= z >> 31;
      const double u = double(z >> 11) / double(uint64_t(1) << 53);
      const size_t s = size_t(std::upper_bound(cumulative_.begin(), cumulative_.end() - 1, u) - cumulative_.begin());
      sources_[s].windows(k, 1, batch_, inputs, targets);
      m.inputs.insert(m.inputs.end(), inputs.begin(), inputs.end());
      m.targets.insert(m.targets.end(), targets.begin(), targets.end());
    }
  }
  m.rows = count;
  // Each micro-batch's loss is a mean over its windows: weighted by its part of the step's
  // windows, the parts add up to the step's mean.
  m.weight = m.share = double(count) / double(step_examples);
  m.trained_tokens = count * seq_;
  return m;
}

MicroBatch TokenWindowData::validation_batch(int64_t index) {
  MicroBatch m;
  val_->batch(index, batch_, m.inputs, m.targets);
  m.rows = batch_;
  m.weight = 1.0 / double(validation_batches_);
  m.trained_tokens = batch_ * seq_;
  return m;
}

}  // namespace deepmoe::train
