// What a training run learns from, handed to the Trainer as micro-batches: pretraining's token
// windows, SFT's conversations, DPO's preference pairs. Each micro-batch is rows of `seq` tokens
// with the objective over their targets' log-probabilities (model_train.h) and its weight in the
// step, so one optimizer, schedule, precision, accumulation, data parallelism and checkpointing
// serve every stage.
#pragma once
#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "io/token_windows.h"
#include "train/model_train.h"
#include "train/parameters.h"

namespace deepmoe::train {

struct MicroBatch {
  std::vector<int32_t> inputs, targets;  // [rows * seq]
  int64_t rows = 0;
  // Its loss and gradients are multiplied by `weight` and summed over the step's micro-batches (and
  // ranks): 1 / micro-batches for a per-micro-batch mean, 1 when the objective already divides by
  // the whole step's count.
  double weight = 1.0;
  // Its part of the step's examples (count / step_examples): the weight of its mean balance loss,
  // which must add up to one over the step whatever `weight` the objective needs.
  double share = 1.0;
  TokenObjective objective;    // empty: the mean cross-entropy over every target
  int64_t trained_tokens = 0;  // targets the objective trains on (for tokens/s)
  // What the objective measured when it ran (DPO's accuracy and margins, ...), each a term of
  // the step's value: the Trainer sums them over micro-batches and ranks into StepReport::extra,
  // except those named "*_max", which it takes the largest of (merge_metric).
  std::shared_ptr<std::map<std::string, double>> metrics;
};

// A metric named "*_max" is the largest of its parts; any other is their sum.
inline bool is_max_metric(const std::string& name) { return name.ends_with("_max"); }
inline void merge_metric(std::map<std::string, double>& into, const std::string& name, double value) {
  auto [it, fresh] = into.try_emplace(name, value);
  if (!fresh) it->second = is_max_metric(name) ? std::max(it->second, value) : it->second + value;
}

class TrainingData {
 public:
  virtual ~TrainingData() = default;
  // Examples [first, first + count) of the stream the steps take `step_examples` at a time
  // (a data-parallel rank's share of a step is a contiguous run of it).
  virtual MicroBatch train_batch(int64_t first, int64_t count, int64_t step_examples) = 0;
  // Held-out batches (0: no validation); the validation loss is Σ weight × loss over them.
  virtual int64_t validation_batches() const = 0;
  virtual MicroBatch validation_batch(int64_t index) = 0;
  // Whether the loss is a mean cross-entropy (its exponential a perplexity); DPO's is not.
  virtual bool loss_is_cross_entropy() const { return true; }
  // Rows of `seq` tokens per example (a DPO pair is 2, a GRPO prompt its group).
  virtual int64_t rows_per_example() const { return 1; }
  // The weights being trained, for data made from the policy itself (GRPO's rollouts); called by
  // the Trainer before the first step.
  virtual void attach(const Parameters& /*policy*/) {}
};

// A training mixture: token files and their weights ("a.u32:0.7,b.u32:0.3"; a file alone weighs
// 1). Throws Error for a weight that is not a positive number.
struct DataSource {
  std::string path;
  double weight = 1.0;
};
std::vector<DataSource> parse_data_sources(const std::string& text);

// Pretraining: windows of token files (TokenWindows' stream), the mean cross-entropy of each
// micro-batch; validation over up to 32 batches of sequential windows of the validation file.
// With several files, window k comes from a file drawn by weight from (seed, k) alone, and is that
// file's own window k: the mixture is deterministic under the seed and resumes exactly (random
// order only).
class TokenWindowData : public TrainingData {
 public:
  TokenWindowData(const std::string& data, const std::string& val_path, int64_t seq, int64_t batch, WindowOrder order,
                  uint64_t seed);
  MicroBatch train_batch(int64_t first, int64_t count, int64_t step_examples) override;
  int64_t validation_batches() const override { return validation_batches_; }
  MicroBatch validation_batch(int64_t index) override;

 private:
  std::vector<TokenWindows> sources_;
  std::vector<double> cumulative_;  // the sources' weights, summed and normalized
  std::unique_ptr<TokenWindows> val_;
  int64_t seq_, batch_, validation_batches_ = 0;
  uint64_t seed_;
};

}  // namespace deepmoe::train
