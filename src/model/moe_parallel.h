// The routed experts of an MoE layer in training, spread over an expert-parallel group
// (model/expert_group.h): each rank sends its tokens' (token, expert) slots to the ranks holding
// those experts, runs its own experts on what it received, and sends the results back, in the
// forward pass and again in the backward pass. moe.cpp's forward and backward call these when
// MoeSaved::parallel.group is set; the shared experts and the router stay on every rank.
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/context.h"
#include "model/config.h"
#include "model/moe.h"

namespace deepmoe {

// Runs the shared experts on x and adds each slot's weighted routed-expert output: out as the
// single-rank path computes it, up to the order of the expert GEMMs' rows. saved.expert_in and
// saved.expert_out receive each slot's input and output (slot order).
void moe_parallel_forward(const Context& ctx, const Config& c, const MoeWeights& w, const float* x, int64_t n_tokens,
                          MoeSaved& saved, float* out);

// For the slots of this rank's tokens: d_weights[choice] = dy · expert output, and
// d_inputs[slot] (slot order, zeroed by the caller) = ∂loss/∂(slot input); the gradients of this
// rank's experts, from every rank's slots, accumulate into `grads`.
void moe_parallel_backward(const Context& ctx, const Config& c, const MoeWeights& w, const MoeWeights& grads,
                           const MoeSaved& saved, const float* dy, std::vector<float>& d_weights,
                           std::vector<float>& d_inputs);

}  // namespace deepmoe
