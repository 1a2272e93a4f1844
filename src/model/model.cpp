#include "model/model.h"

#include <cstring>

#include "core/error.h"
#include "kernels/matmul.h"
#include "kernels/ops.h"

namespace deepmoe {

Model::Model(const ModelWeights& weights, int n_threads)
    : weights_(weights),
      pool_(n_threads),
      expert_load_(size_t(weights.config.num_hidden_layers), std::vector<int64_t>(size_t(weights.config.n_routed_experts))) {
  use_single_threaded_blas();
}

namespace {
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

void Model::forward(std::span<const int32_t> tokens, LatentCache& cache, LogitsFor which, float* logits) {
  const int64_t n_tokens = int64_t(tokens.size());
  if (n_tokens == 0) return;
  if (cache.length + n_tokens > cache.capacity)
    fail("sequence of {} tokens exceeds the cache capacity of {}", cache.length + n_tokens, cache.capacity);
  const BatchSequence sequence{tokens, cache.length, which};
  ContiguousRows rows(cache);
  forward_batch(std::span(&sequence, 1), rows, logits);
  cache.length += n_tokens;
}

void Model::forward_batch(std::span<const BatchSequence> batch, LatentRows& cache, float* logits) {
  const Config& c = config();
  const int64_t hidden = c.hidden_size;
  positions_.clear();
  for (const BatchSequence& sequence : batch) {
    for (int32_t token : sequence.tokens)
      if (token < 0 || token >= c.vocab_size) fail("token id {} is outside the vocabulary [0, {})", token, c.vocab_size);
    for (size_t t = 0; t < sequence.tokens.size(); ++t) positions_.push_back(sequence.first_position + int64_t(t));
  }
  const int64_t n_tokens = int64_t(positions_.size());
  if (n_tokens == 0) return;

  const size_t activations = size_t(n_tokens * hidden);
  if (hidden_.size() < activations) {
    hidden_.resize(activations);
    normed_.resize(activations);
    branch_.resize(activations);
  }
  rope_.compute(c, positions_);
  const float eps = float(c.rms_norm_eps);

  // x: [n_tokens, hidden]
  const WeightMatrix& embed = weights_.embed_tokens;
  int64_t t = 0;
  for (const BatchSequence& sequence : batch)
    for (int32_t token : sequence.tokens) dequantize_rows(embed, token, 1, hidden_.data() + t++ * hidden);

  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const LayerWeights& layer = weights_.layers[size_t(i)];
    rmsnorm(hidden_.data(), hidden, layer.input_layernorm, n_tokens, hidden, eps, normed_.data(), hidden);
    mla_forward(c, layer.self_attn, normed_.data(), batch, rope_, cache, i, forced_attention_mode, mla_, pool_,
                branch_.data());
    axpy(n_tokens * hidden, 1.0f, branch_.data(), hidden_.data());
    rmsnorm(hidden_.data(), hidden, layer.post_attention_layernorm, n_tokens, hidden, eps, normed_.data(), hidden);
    if (layer.is_moe) {
      moe_forward(c, layer.moe, normed_.data(), n_tokens, moe_, pool_, branch_.data());
      std::vector<int64_t>& load = expert_load_[size_t(i)];
      for (size_t e = 0; e < load.size(); ++e) load[e] += moe_.expert_begin[e + 1] - moe_.expert_begin[e];
    } else {
      mlp_forward(layer.mlp, normed_.data(), hidden, n_tokens, moe_.mlp, pool_, branch_.data());
    }
    axpy(n_tokens * hidden, 1.0f, branch_.data(), hidden_.data());
  }

  // The final norm and lm_head only for the rows whose logits are wanted, gathered in order.
  int64_t logit_rows = 0, first_token = 0;
  for (const BatchSequence& sequence : batch) {
    const int64_t count = int64_t(sequence.tokens.size()), rows = sequence.logit_rows();
    rmsnorm(hidden_.data() + (first_token + count - rows) * hidden, hidden, weights_.norm, rows, hidden, eps,
            normed_.data() + logit_rows * hidden, hidden);
    logit_rows += rows;
    first_token += count;
  }
  matmul(pool_, normed_.data(), logit_rows, weights_.lm_head, logits);
}

}  // namespace deepmoe
