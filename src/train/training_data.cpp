#include "train/training_data.h"

#include <algorithm>

namespace deepmoe::train {

TokenWindowData::TokenWindowData(const std::string& data_path, const std::string& val_path, int64_t seq, int64_t batch,
                                 WindowOrder order, uint64_t seed)
    : data_(data_path, seq, order, seed),
      val_(val_path.empty() ? nullptr : std::make_unique<TokenWindows>(val_path, seq, WindowOrder::Sequential, 0)),
      seq_(seq),
      batch_(batch) {
  // The whole validation file once (sequential windows), up to 32 batches.
  if (val_) validation_batches_ = std::clamp<int64_t>((val_->tokens() - 1) / (seq_ * batch_), 1, 32);
}

MicroBatch TokenWindowData::train_batch(int64_t first, int64_t count, int64_t step_examples) {
  MicroBatch m;
  data_.windows(first, count, batch_, m.inputs, m.targets);
  m.rows = count;
  // Each micro-batch's loss is a mean over its windows: weighted by its part of the step's
  // windows, the parts add up to the step's mean.
  m.weight = double(count) / double(step_examples);
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
