// How evenly the MoE layers route tokens: the load statistics a training step logs, and
// DeepSeek-V3's auxiliary-loss-free balancing, which nudges each expert's routing bias against
// its load.
#pragma once
#include <cstdint>
#include <vector>

#include "model/config.h"
#include "train/parameters.h"

namespace deepmoe::train {

// Selections per expert, per MoE layer in layer order (a step's sum over its micro-batches).
using ExpertLoads = std::vector<std::vector<int64_t>>;

struct ExpertLoadStats {
  double max_over_mean = 0;  // the busiest expert's load over the mean load
  double cv = 0;             // coefficient of variation: standard deviation over mean
};

// One MoE layer's statistics from its selections per expert.
ExpertLoadStats expert_load_stats(const std::vector<int64_t>& load);

// Adds gamma·sign(mean load − load_i) to each noaux_tc MoE layer's e_score_correction_bias: an
// expert chosen more than the mean becomes less likely to be chosen, and the other way round.
// Layers without the bias (other top-k methods) are left alone.
void update_balance_bias(const Config& config, Parameters& p, const ExpertLoads& loads, double gamma);

}  // namespace deepmoe::train
