// DeepSeekMoE: shared experts that see every token plus fine-grained routed experts, of which
// each token picks num_experts_per_tok by the gate (greedy, group-limited, or aux-loss-free
// noaux_tc with a selection-only correction bias).
#pragma once
#include <cstdint>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/matmul.h"
#include "model/config.h"
#include "model/mlp.h"
#include "model/weights.h"

namespace deepmoe {

// One token's routing. gate_logits: [n_routed_experts]; bias: [n_routed_experts] or nullptr.
// Writes num_experts_per_tok expert indices (best first) and their combine weights, with
// normalization and routed_scaling_factor applied by the model_type's rule.
void route_token(const Config& config, const float* gate_logits, const float* bias, int32_t* experts,
                 float* weights);

struct MoeScratch {
  std::vector<float> gate_logits, expert_in, expert_out, shared_out;
  std::vector<int32_t> chosen;    // [n_tokens, k]
  std::vector<float> chosen_weight;
  std::vector<int32_t> expert_begin, token_of_slot;  // tokens grouped by expert
  std::vector<float> weight_of_slot;
  MlpScratch mlp;
  std::vector<float> slot_gate, slot_up;  // decode: [n_slots, moe_intermediate]
  std::vector<MatmulJob> jobs;
};

// x: [n_tokens, hidden] -> out: [n_tokens, hidden]. Tokens are grouped by expert so each
// expert's weights are read once per call.
void moe_forward(const Config& config, const MoeWeights& w, const float* x, int64_t n_tokens,
                 MoeScratch& scratch, ThreadPool& pool, float* out);

}  // namespace deepmoe
