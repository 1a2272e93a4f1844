#include "model/model.h"

#include <cstring>

#include "core/error.h"
#include "model/embedding.h"
#include "model/mtp.h"

namespace deepmoe {

Model::Model(const ModelWeights& weights, ModelOptions options)
    : weights_(weights),
      attention_mode_(options.attention_mode),
      context_(options.threads, std::move(options.context)),
      expert_load_(size_t(weights.config.num_hidden_layers),
                   std::vector<int64_t>(size_t(weights.config.n_routed_experts))),
      draft_vocab_(weights.config.vocab_size) {}

void Model::set_draft_vocabulary(int64_t n) {
  if (n < 1 || n > config().vocab_size)
    fail("the draft vocabulary must be in [1, {}] ids, found {}", config().vocab_size, n);
  draft_vocab_ = n;
}

namespace {
// The routed experts a MoE layer's call ran (those routed at least one token).
int64_t experts_with_tokens(const MoeRouting& routing) {
  const std::vector<int32_t>& begin = routing.expert_begin;
  int64_t count = 0;
  for (size_t e = 0; e + 1 < begin.size(); ++e) count += begin[e + 1] > begin[e];
  return count;
}

// One sequence in one contiguous cache: its rows are the cache itself.
class ContiguousRows final : public LatentRows {
 public:
  explicit ContiguousRows(LatentCache& cache) : cache_(cache) {}
  float* open(int64_t layer, size_t) override { return cache_.layer(layer); }
  void commit(int64_t, size_t) override {}

 private:
  LatentCache& cache_;
};
}  // namespace

void Model::forward(std::span<const int32_t> tokens, LatentCache& cache, LogitsFor which, float* logits,
                    float* hidden_out) {
  const int64_t n_tokens = int64_t(tokens.size());
  if (n_tokens == 0) return;
  if (cache.length + n_tokens > cache.capacity)
    fail("sequence of {} tokens exceeds the cache capacity of {}", cache.length + n_tokens, cache.capacity);
  const BatchSequence sequence{tokens, cache.length, which};
  ContiguousRows rows(cache);
  forward_batch(std::span(&sequence, 1), rows, logits, hidden_out);
  cache.length += n_tokens;
}

void Model::draft(int64_t module, std::span<const int32_t> tokens, int64_t first_position, LatentCache& cache,
                  const float* hidden, LogitsFor which, float* logits, float* hidden_out) {
  if (first_position + int64_t(tokens.size()) > cache.capacity)
    fail("draft of {} tokens exceeds the cache capacity of {}", first_position + int64_t(tokens.size()),
         cache.capacity);
  const BatchSequence sequence{tokens, first_position, which};
  ContiguousRows rows(cache);
  draft_batch(module, std::span(&sequence, 1), rows, hidden, logits, hidden_out);
}

int64_t Model::gather_batch(std::span<const BatchSequence> batch) {
  const Config& c = config();
  positions_.clear();
  token_ids_.clear();
  for (const BatchSequence& sequence : batch) {
    for (int32_t token : sequence.tokens)
      if (token < 0 || token >= c.vocab_size)
        fail("token id {} is outside the vocabulary [0, {})", token, c.vocab_size);
    for (size_t t = 0; t < sequence.tokens.size(); ++t) positions_.push_back(sequence.first_position + int64_t(t));
    token_ids_.insert(token_ids_.end(), sequence.tokens.begin(), sequence.tokens.end());
  }
  const int64_t n_tokens = int64_t(positions_.size());
  const size_t activations = size_t(n_tokens * c.hidden_size);
  if (hidden_.size() < activations) {
    hidden_.resize(activations);
    last_rows_.resize(activations);
    normed_.resize(activations);
  }
  if (n_tokens > 0) rope_.compute(c, positions_);
  return n_tokens;
}

void Model::forward_batch(std::span<const BatchSequence> batch, LatentRows& cache, float* logits, float* hidden_out) {
  const Config& c = config();
  experts_read_ = 0;
  if (gather_batch(batch) == 0) return;
  embed_forward(weights_.embed_tokens, token_ids_, hidden_.data());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const LayerWeights& layer = weights_.layers[size_t(i)];
    decoder_forward(context_, c, layer, i, batch, rope_, &cache, attention_mode_, scratch_, nullptr, hidden_.data());
    if (layer.is_moe) {
      const std::vector<int32_t>& begin = scratch_.moe.routing.expert_begin;
      std::vector<int64_t>& load = expert_load_[size_t(i)];
      for (size_t e = 0; e < load.size(); ++e) load[e] += begin[e + 1] - begin[e];
      experts_read_ += experts_with_tokens(scratch_.moe.routing);
    }
  }
  head_rows(batch, weights_.lm_head, weights_.norm, logits, hidden_out);
}

void Model::draft_batch(int64_t module, std::span<const BatchSequence> batch, LatentRows& cache, const float* hidden,
                        float* logits, float* hidden_out) {
  const Config& c = config();
  if (module < 0 || module >= c.num_nextn_predict_layers)
    fail("the model has {} multi-token-prediction modules; module {} asked for", c.num_nextn_predict_layers, module);
  const int64_t n_tokens = gather_batch(batch);
  if (n_tokens == 0) return;
  joined_.resize(size_t(n_tokens * 2 * c.hidden_size));
  const MtpWeights& mtp = weights_.mtp[size_t(module)];
  mtp_input_forward(context_, c, mtp, weights_.embed_tokens, token_ids_, hidden, n_tokens, joined_.data(), nullptr,
                    hidden_.data());
  const int64_t layer = c.num_hidden_layers + module;
  decoder_forward(context_, c, weights_.layers[size_t(layer)], layer, batch, rope_, &cache, attention_mode_, scratch_,
                  nullptr, hidden_.data());
  experts_read_ = weights_.layers[size_t(layer)].is_moe ? experts_with_tokens(scratch_.moe.routing) : 0;
  WeightMatrix head = weights_.lm_head;  // its first draft_vocab_ rows
  head.rows = draft_vocab_;
  head_rows(batch, head, mtp.shared_head_norm, logits, hidden_out);
}

void Model::head_rows(std::span<const BatchSequence> batch, const WeightMatrix& head, const float* norm, float* logits,
                      float* hidden_out) {
  const Config& c = config();
  const int64_t hidden = c.hidden_size;
  int64_t logit_rows = 0, first_token = 0;
  for (const BatchSequence& sequence : batch) {
    const int64_t count = int64_t(sequence.tokens.size()), rows = sequence.logit_rows();
    std::memcpy(last_rows_.data() + logit_rows * hidden, hidden_.data() + (first_token + count - rows) * hidden,
                size_t(rows * hidden) * sizeof(float));
    logit_rows += rows;
    first_token += count;
  }
  if (hidden_out)
    rmsnorm_rows(context_, hidden_.data(), hidden, norm, first_token, hidden, float(c.rms_norm_eps), hidden_out, hidden,
                 nullptr);
  if (logit_rows > 0)
    head_forward(context_, head, norm, float(c.rms_norm_eps), last_rows_.data(), logit_rows, normed_.data(), nullptr,
                 logits);
}

}  // namespace deepmoe
