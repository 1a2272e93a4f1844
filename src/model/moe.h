// DeepSeekMoE: shared experts that see every token plus fine-grained routed experts, of which
// each token picks num_experts_per_tok by the router (model/router.h). Forward and backward side
// by side; training's forward is inference's, keeping what backward needs.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "core/activation_slab.h"
#include "kernels/context.h"
#include "kernels/matmul.h"
#include "model/config.h"
#include "model/expert_group.h"
#include "model/mlp.h"
#include "model/router.h"
#include "model/weights.h"

namespace deepmoe {

// One call's routing: each token's choices, and the (token, choice) slots grouped by expert so
// each expert's weights are read once per call.
struct MoeRouting {
  std::vector<int32_t> chosen;          // [n_tokens, k]
  std::vector<float> chosen_weight;     // [n_tokens, k]
  std::vector<int32_t> expert_begin;    // [n_routed_experts + 1]: expert e's slots are [begin[e], begin[e + 1])
  std::vector<int32_t> token_of_slot;   // [n_tokens · k]
  std::vector<int32_t> choice_of_slot;  // index into chosen / chosen_weight
};

struct MoeScratch {
  std::vector<float> gate_logits, expert_in, expert_out;
  MoeRouting routing;
  RouterScratch router;
  MlpScratch mlp;
  std::vector<float> slot_gate, slot_up;  // [n_slots, moe_intermediate]
  std::vector<MatmulJob> jobs;
};

// Expert parallelism's side of one training call: the rows this rank's experts received from
// the group's ranks, in expert-major order (expert j's rows from rank 0, then rank 1, ...), and
// what its experts computed on them. Sized by the routing, so held here, not in the slab.
struct ExpertParallelSaved {
  ExpertGroup* group = nullptr;               // null: every expert is on this rank
  std::vector<int32_t> recv_counts;           // [ranks, experts per rank]: rows from rank r for expert j
  std::vector<int64_t> send_rows, recv_rows;  // per rank
  std::vector<int32_t> received_row;          // expert-major row i is received row received_row[i]
  std::vector<int32_t> expert_begin;          // [experts per rank + 1], in expert-major rows
  std::vector<float> in, gate, up, act;       // [rows, hidden] and [rows, moe_intermediate]
};

// What backward needs of one call (spans from the step's slab, and the routing).
struct MoeSaved {
  MoeRouting routing;
  std::span<float> scores;                 // [n_tokens, n_routed_experts]
  std::span<float> expert_in, expert_out;  // [n_slots, hidden]: each slot's input and expert output
  MlpSaved experts;                        // [n_slots, moe_intermediate]
  MlpSaved shared;                         // [n_tokens, shared intermediate]
  // Set `parallel.group` after take() to run the routed experts over an expert-parallel group:
  // expert_in/expert_out then hold the rows this rank's tokens sent and got back.
  ExpertParallelSaved parallel;
  // Carves the spans for n_tokens (before the forward pass).
  static MoeSaved take(const Config& config, const MoeWeights& w, ActivationSlab& slab, int64_t n_tokens);
};

// x: [n_tokens, hidden] -> out: [n_tokens, hidden]. Inference passes saved = null; training,
// spans from MoeSaved::take. After the call, scratch.routing (or saved->routing) holds the routing.
void moe_forward(const Context& ctx, const Config& config, const MoeWeights& w, const float* x, int64_t n_tokens,
                 MoeScratch& scratch, MoeSaved* saved, float* out);

// For one (token, expert) slot of a training call: d_out[hidden] = weight·dy of its token (the
// gradient of the expert's output) and d_weights[choice] = dy · the expert's output. Shared by the
// single-rank and the expert-parallel backward.
void slot_output_backward(const MoeSaved& saved, const float* dy, int64_t hidden, int64_t slot, float* d_out,
                          std::vector<float>& d_weights);

// dx [n_tokens, hidden] += ∂loss/∂x for dy = ∂loss/∂out, over `batch` sequences of `seq` tokens
// (the balance loss is per sequence; aux_weight 0: none); the weights' gradients accumulate into
// `grads`.
void moe_backward(const Context& ctx, const Config& config, const MoeWeights& w, const MoeWeights& grads,
                  const float* x, int64_t batch, int64_t seq, double aux_weight, const MoeSaved& saved, const float* dy,
                  float* dx);

}  // namespace deepmoe
