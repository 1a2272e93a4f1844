// GRPO's objective (Shao et al. 2024, DeepSeekMath; DeepSeek-R1) over a micro-batch of sampled
// completions, as a TokenObjective: each prompt's G completions form a group, advantages are the
// rewards standardized within it, A = (r − mean) / (std + 1e-4) (std unbiased, as TRL), and
//   J = 1/N Σ_seq 1/|o| Σ_t [min(ρ_t A, clip(ρ_t, 1 − ε, 1 + ε) A) − β KL_t],
//   ρ_t = π_θ(o_t) / π_old(o_t),  KL_t = π_ref/π_θ − log(π_ref/π_θ) − 1  (the unbiased k3 estimator),
// N the step's completions; the loss is −J. π_old is the sampling policy's probability of each
// token, π_ref the frozen reference's.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "train/model_train.h"

namespace deepmoe::train {

// Group-standardized advantages: rewards [groups × group], each group's own mean and std.
std::vector<double> group_advantages(std::span<const double> rewards, int64_t group);

struct GrpoRow {
  std::vector<double> weights;                     // [seq]: 1 at the completion's targets
  std::vector<double> old_logprobs, ref_logprobs;  // [seq]: at the completion's targets
  double advantage = 0;
};

struct GrpoSettings {
  double epsilon = 0.2, beta = 0.04;
  double completions_in_step = 1;  // N
};

// The objective of these rows (each `seq` positions), recording into `metrics` its terms of the
// step's mean KL, clipped fraction and the mean and largest |log π_θ − log π_old| (the sampler's
// and the trainer's log-probabilities of the same tokens, which agree when the policy has not moved).
TokenObjective grpo_objective(std::vector<GrpoRow> rows, int64_t seq, const GrpoSettings& settings,
                              std::shared_ptr<std::map<std::string, double>> metrics);

}  // namespace deepmoe::train
