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
  // hidden_out (optional) receives every token's hidden state after the final norm (what an MTP
  // module's first draft step reads), [n_tokens, hidden].
  void forward(std::span<const int32_t> tokens, LatentCache& cache, LogitsFor which, float* logits,
               float* hidden_out = nullptr);

  // Runs every sequence's chunk in one pass (see model/batch.h). logits receives each sequence's
  // logit_rows() rows of [vocab], one sequence after another. The caller has checked positions
  // against its cache; throws Error on a token id outside the vocabulary.
  void forward_batch(std::span<const BatchSequence> batch, LatentRows& cache, float* logits,
                     float* hidden_out = nullptr);

  // Runs MTP module `module` (< config().num_nextn_predict_layers) over the batch: sequence s's
  // tokens are the tokens that follow positions first_position, ... (t_{i+1} for position i),
  // `hidden` [n_tokens, hidden] the previous depth's hidden states at those positions (forward's
  // hidden_out, or an earlier draft step's). Writes the module's latent rows at those positions
  // (a LatentCache's length is the caller's to keep); logits for the logit rows, and hidden_out
  // (optional) every token's state after shared_head.norm, the next draft step's `hidden`.
  void draft_batch(int64_t module, std::span<const BatchSequence> batch, LatentRows& cache, const float* hidden,
                   float* logits, float* hidden_out = nullptr);
  // The ids the MTP module's head scores: [0, n) (n >= 1; the whole vocabulary by default).
  // Drafting needs only the argmax, and the head is most of a draft step's bytes (a 102400-id
  // head is 70 % of V2-Lite's module); byte-level BPE numbers its tokens in merge order, so the
  // low ids are the common ones and a draft outside them is rare (FR-Spec, Zhao et al. 2025).
  void set_draft_vocabulary(int64_t n);
  int64_t draft_vocabulary() const { return draft_vocab_; }
  // One sequence: `tokens` at positions `first_position`, ... of `cache` (its length unchanged).
  void draft(int64_t module, std::span<const int32_t> tokens, int64_t first_position, LatentCache& cache,
             const float* hidden, LogitsFor which, float* logits, float* hidden_out = nullptr);

  // Routed experts the last forward_batch or draft_batch ran (each once for all its tokens),
  // summed over its MoE layers: with ModelWeights::routed_expert_bytes, the expert bytes it read.
  int64_t experts_read() const { return experts_read_; }

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
  int64_t experts_read_ = 0;
  int64_t draft_vocab_;
  // Checks the ids and lays out positions_ and token_ids_ for the batch; returns the token count.
  int64_t gather_batch(std::span<const BatchSequence> batch);
  // The head over the rows whose logits are wanted (gathered in order from hidden_), normed by
  // `norm`; hidden_out (optional) every row normed.
  void head_rows(std::span<const BatchSequence> batch, const WeightMatrix& head, const float* norm, float* logits,
                 float* hidden_out);

  std::vector<float> hidden_, last_rows_, normed_;  // [n_tokens, hidden]
  std::vector<float> joined_;                       // [n_tokens, 2·hidden]: an MTP module's input
  DecoderScratch scratch_;
};

}  // namespace deepmoe
