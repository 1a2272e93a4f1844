// SVG plots of a training run from its metrics.jsonl, so no Python is needed to look at one:
// loss.svg (train and validation loss), lr.svg (learning rate), expert_load.svg (a heatmap of
// each MoE layer's max/mean expert load over the steps), and for the later stages reward.svg (GRPO's
// mean reward and KL) and preference.svg (DPO's accuracy).
#pragma once
#include <string>

namespace deepmoe::train {

// Reads DIR/metrics.jsonl and writes the SVGs into DIR. Throws Error on unreadable metrics.
void write_plots(const std::string& dir);

}  // namespace deepmoe::train
