// DeepSeekMoE's router: gate logits → scores (softmax or sigmoid) → the selection (greedy,
// group-limited, or aux-loss-free noaux_tc whose correction bias steers selection only) → the
// combine weights (renormalized and/or × routed_scaling_factor by the model_type's rule). Its
// backward carries the gradient of the combine weights (and of the sequence-wise balance loss)
// to the gate; selection itself is not differentiable.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "model/config.h"

namespace deepmoe {

// Buffers one thread's routing reuses, so routing a token allocates nothing.
struct RouterScratch {
  std::vector<float> scores, choice, group_score;
  std::vector<int32_t> order, kept_groups;
};

// One token's routing. gate_logits: [n_routed_experts]; bias: [n_routed_experts] or nullptr.
// Writes num_experts_per_tok expert indices (best first) and their combine weights, and the
// scores of all experts when `scores` is given.
void route_token(const Config& config, const float* gate_logits, const float* bias, int32_t* experts, float* weights,
                 RouterScratch& scratch, float* scores = nullptr);
void route_token(const Config& config, const float* gate_logits, const float* bias, int32_t* experts, float* weights);

// The sequence-wise balance loss of `batch` sequences of `seq` tokens (scores [n, experts],
// chosen [n, k]): per sequence Σᵢ fᵢ·Pᵢ with fᵢ = E/(K·T)·(selections of i), Pᵢ the mean of
// expert i's score normalized over all experts; averaged over the batch.
double balance_loss(const Config& config, const float* scores, const int32_t* chosen, int64_t batch, int64_t seq);

// ∂loss/∂gate_logits [n, experts] from ∂loss/∂weights [n, k] and aux_weight × the balance
// loss's gradient (none when aux_weight is 0), for the scores and choices the forward pass made.
void router_backward(const Config& config, const float* scores, const int32_t* chosen, const float* d_weights,
                     int64_t batch, int64_t seq, double aux_weight, float* d_logits);

}  // namespace deepmoe
