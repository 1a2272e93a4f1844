// Multi-head Latent Attention (DeepSeek-V2 §2.1): queries through an optional low-rank
// bottleneck, keys and values through a shared latent c_kv plus one decoupled rope key.
#pragma once
#include <cstdint>
#include <optional>
#include <vector>

#include <span>

#include "core/thread_pool.h"
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
  std::vector<float> q, q_lora, kv_a, q_latent, out_latent, attn;
  std::vector<float*> cache_layers;   // each sequence's open latent rows
  std::vector<int64_t> first_token;   // each sequence's first token in the batch, then the end
};

// x: [n_tokens, hidden], the tokens of `batch` one sequence after another; appends each
// sequence's latents to its rows of `layer` in `cache` and writes out: [n_tokens, hidden].
// rope holds cos/sin for exactly these tokens' positions, in the same order. A sequence's
// attention is absorbed up to kSmallBatchMax new tokens, expanded above, unless `forced`.
void mla_forward(const Config& config, const MlaWeights& w, const float* x, std::span<const BatchSequence> batch,
                 const RopeTable& rope, LatentRows& cache, int64_t layer, std::optional<AttentionMode> forced,
                 MlaScratch& scratch, ThreadPool& pool, float* out);

}  // namespace deepmoe
