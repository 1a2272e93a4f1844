// GRPO's data (deepmoe grpo): prompts, each sampled G times from the current policy by a rollout
// sampler the caller provides (the serving engine over the trainer's own weights: train/ cannot
// reach serve/), scored by a Reward, advantages within each group, the reference model's
// log-probabilities of the sampled tokens, and grpo_objective over the rows. One example is one
// prompt and its G completions (G rows). A reward that fails makes the micro-batch report
// `skipped` (the Trainer then skips the step; nothing is lost).
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "train/grpo_objective.h"
#include "train/parameters.h"
#include "train/rewards.h"
#include "train/sft_data.h"

namespace deepmoe::train {

struct GrpoPrompt {
  std::vector<int32_t> tokens;  // with BOS (and the chat template's generation prompt)
  std::string text, answer;
};

struct SampledCompletion {
  std::vector<int32_t> tokens;   // the completion (its EOS included when it stopped)
  std::vector<double> logprobs;  // the sampler's log-probability of each
  std::string text;
};

// Samples `group` completions of each prompt from the policy whose weights are `policy`, the
// completions of prompt i at [i * group, (i + 1) * group); `seed` makes the draw reproducible.
using RolloutSampler = std::function<std::vector<SampledCompletion>(
    const Parameters& policy, const std::vector<const GrpoPrompt*>& prompts, int64_t group, uint64_t seed)>;

// Per position: log p(target) of a micro-batch's rows under the reference model.
using TokenScorer = std::function<std::vector<double>(const MicroBatch& rows)>;

struct GrpoOptions {
  int64_t group = 8, seq = 256;
  GrpoSettings objective;
  uint64_t seed = 0;
  int32_t pad = 0;
  // Where each completion is appended as a JSON line (empty: nowhere): the example's index, the
  // prompt's and the completion's tokens and text, the sampler's log-probabilities, the reward and
  // the advantage. What TRL users look at in their completion tables; what tests/reference
  // recomputes the objective from.
  std::string rollout_log;
};

class GrpoData : public TrainingData {
 public:
  GrpoData(std::vector<GrpoPrompt> prompts, RolloutSampler sampler, std::unique_ptr<Reward> reward,
           TokenScorer reference, const GrpoOptions& options);
  void attach(const Parameters& policy) override { policy_ = &policy; }
  MicroBatch train_batch(int64_t first, int64_t count, int64_t step_examples) override;
  int64_t validation_batches() const override { return 0; }
  MicroBatch validation_batch(int64_t) override { return {}; }
  bool loss_is_cross_entropy() const override { return false; }
  int64_t rows_per_example() const override { return options_.group; }

 private:
  std::vector<GrpoPrompt> prompts_;
  RolloutSampler sampler_;
  std::unique_ptr<Reward> reward_;
  TokenScorer reference_;
  GrpoOptions options_;
  EpochOrder order_;
  const Parameters* policy_ = nullptr;
};

}  // namespace deepmoe::train
