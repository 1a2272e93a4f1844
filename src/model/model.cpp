#include "model/model.h"

#include <cstring>

#include "core/error.h"
#include "kernels/matmul.h"
#include "kernels/ops.h"

namespace deepmoe {

Model::Model(const ModelWeights& weights, int n_threads) : weights_(weights), pool_(n_threads) {
  use_single_threaded_blas();
}

void Model::forward(std::span<const int32_t> tokens, LatentCache& cache, LogitsFor which, float* logits) {
  const Config& c = config();
  const int64_t n_tokens = int64_t(tokens.size()), hidden = c.hidden_size;
  if (n_tokens == 0) return;
  if (cache.length + n_tokens > cache.capacity)
    fail("sequence of {} tokens exceeds the cache capacity of {}", cache.length + n_tokens, cache.capacity);
  for (int32_t token : tokens)
    if (token < 0 || token >= c.vocab_size) fail("token id {} is outside the vocabulary [0, {})", token, c.vocab_size);

  const size_t activations = size_t(n_tokens * hidden);
  if (hidden_.size() < activations) {
    hidden_.resize(activations);
    normed_.resize(activations);
    branch_.resize(activations);
  }
  const int64_t first_position = cache.length;
  rope_.compute(c, first_position, n_tokens);
  const AttentionMode mode = forced_attention_mode.value_or(
      n_tokens <= kSmallBatchMax ? AttentionMode::Absorbed : AttentionMode::Expanded);
  const float eps = float(c.rms_norm_eps);

  // x: [n_tokens, hidden]
  const WeightMatrix& embed = weights_.embed_tokens;
  for (int64_t t = 0; t < n_tokens; ++t) dequantize_rows(embed, tokens[size_t(t)], 1, hidden_.data() + t * hidden);

  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const LayerWeights& layer = weights_.layers[size_t(i)];
    rmsnorm(hidden_.data(), hidden, layer.input_layernorm, n_tokens, hidden, eps, normed_.data(), hidden);
    mla_forward(c, layer.self_attn, normed_.data(), n_tokens, first_position, rope_, cache.layer(i), mode, mla_,
                pool_, branch_.data());
    axpy(n_tokens * hidden, 1.0f, branch_.data(), hidden_.data());
    rmsnorm(hidden_.data(), hidden, layer.post_attention_layernorm, n_tokens, hidden, eps, normed_.data(), hidden);
    if (layer.is_moe) {
      moe_forward(c, layer.moe, normed_.data(), n_tokens, moe_, pool_, branch_.data());
    } else {
      mlp_forward(layer.mlp, normed_.data(), hidden, n_tokens, moe_.mlp, pool_, branch_.data());
    }
    axpy(n_tokens * hidden, 1.0f, branch_.data(), hidden_.data());
  }
  cache.length += n_tokens;

  const int64_t first_logit_row = which == LogitsFor::AllTokens ? 0 : n_tokens - 1;
  const int64_t logit_rows = n_tokens - first_logit_row;
  rmsnorm(hidden_.data() + first_logit_row * hidden, hidden, weights_.norm, logit_rows, hidden, eps,
          normed_.data(), hidden);
  matmul(pool_, normed_.data(), logit_rows, weights_.lm_head, logits);
}

}  // namespace deepmoe
