// Multi-head Latent Attention (DeepSeek-V2 §2.1): queries through an optional low-rank
// bottleneck, keys and values through a shared latent c_kv plus one decoupled rope key. One
// forward for inference and training (which runs the expanded form and keeps what its backward,
// beside it, needs); the absorbed form is inference's, tested against the expanded one.
#pragma once
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "core/activation_slab.h"
#include "kernels/context.h"
#include "model/batch.h"
#include "model/config.h"
#include "model/rope.h"
#include "model/weights.h"

namespace deepmoe {

// Expanded: up-project every cached latent through kv_b_proj into per-head keys and values, head
// by head (the paper's formulation; cheapest for long prompts). Absorbed: fold kv_b_proj into
// the queries and the output so attention runs directly on the latent cache (cheapest for decode).
enum class AttentionMode { Expanded, Absorbed };

struct MlaScratch {  // grown on demand, reused across layers and calls
  std::vector<float> q, q_lora, kv_a, q_latent, out_latent, attn, scores;
  std::vector<float*> cache_layers;  // each sequence's open latent rows
  std::vector<int64_t> first_token;  // each sequence's first token in the batch, then the end
};

// What backward needs of one training call over `batch` sequences of `seq` tokens (spans from the
// step's slab; N = batch · seq).
struct MlaSaved {
  std::span<float> q_a, q_a_inv_rms, q_latent;  // q_lora only: [N, q_lora_rank] before / after its norm
  std::span<float> q;                           // [N, heads, qk_head_dim], rope part rotated
  std::span<float> kv_a, c_inv_rms;             // [N, kv_lora_rank + rope] before the norm, [N]
  std::span<float> latent;                      // [N, kv_lora_rank + rope]: the cache rows (c_kv normed, k_pe rotated)
  std::span<float> kv;                          // [N, heads, nope + v]: expanded keys and values
  std::span<float> probs;                       // [batch, heads, seq, seq] (zero above the diagonal)
  std::span<float> attn;                        // [N, heads · v]
  int64_t seq = 0;
  static MlaSaved take(const Config& config, ActivationSlab& slab, int64_t batch, int64_t seq);
};

// x: [n_tokens, hidden], the tokens of `batch` one sequence after another; appends each
// sequence's latents to its rows of `layer` in `cache` and writes out: [n_tokens, hidden].
// rope holds cos/sin for exactly these tokens' positions, in the same order. A sequence's
// attention is absorbed up to kSmallBatchMax new tokens, expanded above, unless `forced`.
// Training passes saved (from MlaSaved::take; every sequence of saved->seq tokens from position 0,
// expanded) and no cache: saved->latent holds the rows.
void mla_forward(const Context& ctx, const Config& config, const MlaWeights& w, const float* x,
                 std::span<const BatchSequence> batch, const RopeTable& rope, LatentRows* cache, int64_t layer,
                 std::optional<AttentionMode> forced, MlaScratch& scratch, MlaSaved* saved, float* out);

// dx [N, hidden] += ∂loss/∂x for d_out = ∂loss/∂out; the weights' gradients accumulate into `grads`.
void mla_backward(const Context& ctx, const Config& config, const MlaWeights& w, const MlaWeights& grads,
                  const float* x, int64_t batch, const RopeTable& rope, const MlaSaved& saved, const float* d_out,
                  float* dx);

}  // namespace deepmoe
