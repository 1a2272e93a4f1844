#include "train/grpo_objective.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "train/training_data.h"

namespace deepmoe::train {

std::vector<double> group_advantages(std::span<const double> rewards, int64_t group) {
  if (group < 2 || rewards.size() % size_t(group) != 0)
    fail("GRPO needs groups of at least 2 completions, found {} rewards in groups of {}", rewards.size(), group);
  std::vector<double> advantages(rewards.size());
  for (size_t first = 0; first < rewards.size(); first += size_t(group)) {
    const auto g = rewards.subspan(first, size_t(group));
    double mean = 0;
    for (const double r : g) mean += r / double(group);
    double squares = 0;
    for (const double r : g) squares += (r - mean) * (r - mean);
    const double std = std::sqrt(squares / double(group - 1));
    for (size_t i = 0; i < g.size(); ++i) advantages[first + i] = (g[i] - mean) / (std + 1e-4);
  }
  return advantages;
}

TokenObjective grpo_objective(std::vector<GrpoRow> rows, int64_t seq, const GrpoSettings& s,
                              std::shared_ptr<std::map<std::string, double>> metrics) {
  return [rows = std::move(rows), seq, s, metrics](std::span<const double> logprobs, std::span<double> gradient) {
    if (logprobs.size() != rows.size() * size_t(seq))
      fail("grpo: {} log-probabilities for {} rows", logprobs.size(), rows.size());
    double loss = 0, kl = 0, clipped = 0, gap = 0, largest_gap = 0;
    for (size_t r = 0; r < rows.size(); ++r) {
      const GrpoRow& row = rows[r];
      double length = 0;
      for (const double w : row.weights) length += w;
      const double scale = length > 0 ? 1.0 / (length * s.completions_in_step) : 0.0;
      for (size_t t = 0; t < size_t(seq); ++t) {
        const size_t i = r * size_t(seq) + t;
        gradient[i] = 0;
        if (row.weights[t] == 0) continue;
        const double lp = logprobs[i], ratio = std::exp(lp - row.old_logprobs[t]);
        const double unclipped = ratio * row.advantage;
        const double bounded = std::clamp(ratio, 1 - s.epsilon, 1 + s.epsilon) * row.advantage;
        const double ref_ratio = std::exp(row.ref_logprobs[t] - lp);  // π_ref / π_θ
        const double kl_t = ref_ratio - (row.ref_logprobs[t] - lp) - 1;
        // The surrogate's gradient flows through the unclipped branch only where it is the min.
        const bool through = unclipped <= bounded;
        const double d_objective = (through ? unclipped : 0.0) - s.beta * (1 - ref_ratio);
        loss -= scale * (std::min(unclipped, bounded) - s.beta * kl_t);
        gradient[i] = -scale * d_objective;
        kl += scale * kl_t;
        clipped += through ? 0.0 : scale;
        gap += scale * std::abs(lp - row.old_logprobs[t]);
        largest_gap = std::max(largest_gap, std::abs(lp - row.old_logprobs[t]));
      }
    }
    (*metrics)["kl"] += kl;
    (*metrics)["clip_fraction"] += clipped;
    (*metrics)["logprob_gap"] += gap;
    merge_metric(*metrics, "logprob_gap_max", largest_gap);
    return loss;
  };
}

}  // namespace deepmoe::train
