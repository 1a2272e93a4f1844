// DeepSeekMoE for training: routing (every scoring and top-k method, the selection bias of
// noaux_tc steering selection only), routed and shared experts, the sequence-wise balance loss,
// and a backward pass in which the gradient reaches the gate through the selected experts'
// combine weights (selection itself is not differentiable).
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "model/config.h"
#include "train/layers.h"
#include "train/parameters.h"

namespace deepmoe::train {

// Float activations are spans into the step's ActivationSlab; the small index lists are vectors.
struct MoeSaved {
  std::span<float> scores;       // [N, experts] after softmax / sigmoid
  std::vector<int32_t> chosen;   // [N, k]
  std::span<float> weights;      // [N, k] combine weights
  std::vector<int32_t> counts;   // [experts] selections in this call (load statistics, bias update)
  // Per expert: the tokens (row, slot) routed to it, their gathered inputs and saved activations.
  std::vector<std::vector<int32_t>> rows, slots;
  std::vector<std::span<float>> inputs, outputs;
  std::vector<MlpSaved> experts;
  MlpSaved shared;
  double aux_loss = 0;  // Σ over sequences of Σᵢ fᵢ·Pᵢ, divided by the batch (not yet weighted)
};

// x: [batch * seq, hidden] (normed) -> out. With aux_weight > 0 the balance loss is computed and
// its gradient added in backward.
void moe_train_forward(const Config& c, Parameters& p, const std::string& prefix, const float* x, int64_t batch,
                       int64_t seq, ActivationSlab& slab, MoeSaved& saved, float* out);
void moe_train_backward(const Config& c, Parameters& p, const std::string& prefix, const float* x, int64_t batch,
                        int64_t seq, double aux_weight, const MoeSaved& saved, const float* d_out, float* dx);

}  // namespace deepmoe::train
