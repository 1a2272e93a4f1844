// The decoder for inference: embedding → layers (model/decoder.h) → final RMSNorm → lm_head.
// One forward call runs a chunk of tokens of one sequence and appends them to its latent cache,
// or (forward_batch) chunks of several sequences at once. Training runs the same layers
// (train/model_train.h).
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "kernels/context.h"
#include "model/batch.h"
#include "model/decoder.h"
#include "model/latent_cache.h"
#include "model/weights.h"

namespace deepmoe {

struct ModelOptions {
  int threads = 1;
  // Absorbed for up to kSmallBatchMax new tokens of a sequence, expanded above, unless set.
  std::optional<AttentionMode> attention_mode;
  ContextOptions context;  // batch invariance (the server), an observer (calibration)
};

class Model {
 public:
  // Starts options.threads worker threads (the model's context owns them).
  Model(const ModelWeights& weights, ModelOptions options);
  Model(const ModelWeights& weights, int n_threads) : Model(weights, ModelOptions{n_threads, {}, {}}) {}

  const Config& config() const { return weights_.config; }
  const ModelWeights& weights() const { return weights_; }

  // Runs `tokens` at positions cache.length ... and appends them to `cache`. logits receives
  // [n_tokens, vocab] (AllTokens) or [1, vocab] (LastToken). Throws Error on a token id outside
  // the vocabulary or a full cache.
  void forward(std::span<const int32_t> tokens, LatentCache& cache, LogitsFor which, float* logits);

  // Runs every sequence's chunk in one pass (see model/batch.h). logits receives each sequence's
  // logit_rows() rows of [vocab], one sequence after another. The caller has checked positions
  // against its cache; throws Error on a token id outside the vocabulary.
  void forward_batch(std::span<const BatchSequence> batch, LatentRows& cache, float* logits);

  // Tokens routed to each expert since construction: [layer][n_routed_experts] (zeros for dense layers).
  const std::vector<std::vector<int64_t>>& expert_load() const { return expert_load_; }

  // The model's context: its threads, for a caller's work between passes (the server samples on them).
  const Context& context() const { return context_; }

 private:
  const ModelWeights& weights_;
  std::optional<AttentionMode> attention_mode_;
  Context context_;
  RopeTable rope_;
  std::vector<int64_t> positions_;
  std::vector<int32_t> token_ids_;
  std::vector<std::vector<int64_t>> expert_load_;
  std::vector<float> hidden_, last_rows_, normed_;  // [n_tokens, hidden]
  DecoderScratch scratch_;
};

}  // namespace deepmoe
