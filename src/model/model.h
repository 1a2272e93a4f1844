// The decoder: embedding → layers (RMSNorm → MLA → residual → RMSNorm → MLP or MoE → residual)
// → final RMSNorm → lm_head. One forward call runs a chunk of tokens of one sequence and
// appends them to its latent cache.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "core/thread_pool.h"
#include "model/latent_cache.h"
#include "model/mla.h"
#include "model/moe.h"
#include "model/weights.h"

namespace deepmoe {

enum class LogitsFor { AllTokens, LastToken };

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

  std::optional<AttentionMode> forced_attention_mode;

 private:
  const ModelWeights& weights_;
  ThreadPool pool_;
  RopeTable rope_;
  std::vector<float> hidden_, normed_, branch_;  // [n_tokens, hidden]
  MlaScratch mla_;
  MoeScratch moe_;
};

}  // namespace deepmoe
