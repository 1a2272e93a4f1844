#include "train/expert_balance.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace deepmoe::train {

ExpertLoadStats expert_load_stats(const std::vector<int64_t>& load) {
  double mean = 0, max = 0, var = 0;
  for (const int64_t v : load) mean += double(v) / double(load.size());
  for (const int64_t v : load) {
    max = std::max(max, double(v));
    var += (double(v) - mean) * (double(v) - mean) / double(load.size());
  }
  return {max / mean, std::sqrt(var) / mean};
}

void update_balance_bias(const Config& config, Parameters& p, const ExpertLoads& loads, double gamma) {
  size_t moe_index = 0;
  // The main layers', then the MTP modules' when they were trained (their loads come last).
  for (int64_t l = 0; l < config.layer_count() && moe_index < loads.size(); ++l) {
    if (!config.is_moe_layer(l)) continue;
    const auto& load = loads[moe_index++];
    float* bias = p.value(fmt::format("model.layers.{}.mlp.gate.e_score_correction_bias", l));
    if (bias == nullptr) continue;
    double mean = 0;
    for (const int64_t v : load) mean += double(v) / double(load.size());
    for (size_t i = 0; i < load.size(); ++i)
      bias[i] += float(gamma * double((mean > double(load[i])) - (mean < double(load[i]))));
  }
}

}  // namespace deepmoe::train
