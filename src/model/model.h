// The decoder: embedding → layers (RMSNorm → MLA → residual → RMSNorm → MLP or MoE → residual)
// → final RMSNorm → lm_head. One forward call runs a chunk of tokens of one sequence and
// appends them to its latent cache, or (forward_batch) chunks of several sequences at once.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "core/thread_pool.h"
#include "model/batch.h"
#include "model/latent_cache.h"
#include "model/mla.h"
#include "model/moe.h"
#include "model/weights.h"

namespace deepmoe {

class Model {
 public:
  // Starts n_threads worker threads and sets the GEMM library's thread count.
  Model(const ModelWeights& weights, int n_threads);

  const Config& config() const { return weights_.config; }
  const ModelWeights& weights() const { return weights_; }

  // Runs `tokens` at positions cache.length ... and appends them to `cache`. logits receives
  // [n_tokens, vocab] (AllTokens) or [1, vocab] (LastToken). Throws Error on a token id outside
  // the vocabulary or a full cache. Attention mode: absorbed for up to kSmallBatchMax tokens,
  // expanded above, unless forced.
  void forward(std::span<const int32_t> tokens, LatentCache& cache, LogitsFor which, float* logits);

  // Runs every sequence's chunk in one pass (see model/batch.h). logits receives each sequence's
  // logit_rows() rows of [vocab], one sequence after another. The caller has checked positions
  // against its cache; throws Error on a token id outside the vocabulary.
  void forward_batch(std::span<const BatchSequence> batch, LatentRows& cache, float* logits);

  // Tokens routed to each expert since construction: [layer][n_routed_experts] (zeros for dense layers).
  const std::vector<std::vector<int64_t>>& expert_load() const { return expert_load_; }

  // The model's threads, for a caller's work between passes (the server samples on them).
  ThreadPool& pool() { return pool_; }

  std::optional<AttentionMode> forced_attention_mode;

 private:
  const ModelWeights& weights_;
  ThreadPool pool_;
  RopeTable rope_;
  std::vector<int64_t> positions_;
  std::vector<std::vector<int64_t>> expert_load_;
  std::vector<float> hidden_, normed_, branch_;  // [n_tokens, hidden]
  MlaScratch mla_;
  MoeScratch moe_;
};

}  // namespace deepmoe
