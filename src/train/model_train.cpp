#include "train/model_train.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "kernels/gemm_bf16.h"
#include "kernels/matmul.h"
#include "train/layers.h"

namespace deepmoe::train {

TrainGraph::TrainGraph(const Config& config, int n_threads, GemmPrecision precision, bool recompute)
    : config_(config), pool_(n_threads), precision_(precision), recompute_(recompute) {
  if (precision == GemmPrecision::BF16 && !cpu_has_bf16_gemm()) fail("bf16 training needs a CPU with AVX512-BF16");
  use_single_threaded_blas();
  set_training_pool(&pool_);
  set_training_precision(precision);
  set_bf16_weights(precision == GemmPrecision::BF16 ? &bf16_weights_ : nullptr);
}

TrainGraph::~TrainGraph() {
  set_bf16_weights(nullptr);
  set_training_precision(GemmPrecision::F32);
  set_training_pool(nullptr);
}

StepLoss TrainGraph::run(Parameters& p, std::span<const int32_t> inputs, std::span<const int32_t> targets,
                         int64_t batch, int64_t seq, double aux_weight, bool backward, float grad_scale) {
  const Config& c = config_;
  const int64_t n = batch * seq, hidden = c.hidden_size, vocab = c.vocab_size;
  const float eps = float(c.rms_norm_eps);
  if (int64_t(inputs.size()) != n || int64_t(targets.size()) != n) fail("train: batch shape mismatch");
  for (const auto ids : {inputs, targets})
    for (const int32_t id : ids)
      if (id < 0 || id >= vocab) fail("token id {} is outside the vocabulary [0, {})", id, vocab);
  if (rope_positions_ != seq) {
    rope_.compute(c, 0, seq);
    rope_positions_ = seq;
  }
  layers_.resize(recompute_ ? 1 : size_t(c.num_hidden_layers));
  if (recompute_) layer_inputs_.resize(size_t(c.num_hidden_layers));
  StepLoss result;
  // The weights may have changed since the last call (optimizer step, resume): fresh bf16 copies.
  if (precision_ == GemmPrecision::BF16) bf16_weights_.refresh(p.values().data(), p.values().size());

  // Forward.
  const float* embed = p.value("model.embed_tokens.weight");
  std::vector<float> x(size_t(n * hidden));
  for (int64_t r = 0; r < n; ++r) std::copy_n(embed + int64_t(inputs[size_t(r)]) * hidden, hidden, x.data() + r * hidden);
  slab_.rewind();
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    if (recompute_) {
      layer_inputs_[size_t(l)] = slab_.take(x.size());
      std::copy(x.begin(), x.end(), layer_inputs_[size_t(l)].begin());
      layer_slab_.rewind();
    }
    forward_layer(p, l, batch, seq, x, recompute_ ? layer_slab_ : slab_, layers_[recompute_ ? 0 : size_t(l)], &result);
  }
  final_in_ = slab_.take(x.size());
  std::copy(x.begin(), x.end(), final_in_.begin());
  final_inv_rms_ = slab_.take(size_t(n));
  final_normed_ = slab_.take(size_t(n * hidden));
  rmsnorm_forward(x.data(), hidden, p.value("model.norm.weight"), n, hidden, eps, final_normed_.data(),
                  final_inv_rms_.data());
  const bool tied = c.tie_word_embeddings;
  const std::string head_name = tied ? "model.embed_tokens.weight" : "lm_head.weight";
  logits_ = slab_.take(size_t(n * vocab));
  linear_forward(final_normed_.data(), n, p.value(head_name), vocab, hidden, logits_.data());

  // Cross-entropy; logits_ becomes d loss / d logits = (softmax - onehot) / n.
  std::vector<double> row_loss(static_cast<size_t>(n));
  pool_.parallel_for(n, 8, [&](int64_t r_begin, int64_t r_end) {
  for (int64_t r = r_begin; r < r_end; ++r) {
    float* row = logits_.data() + r * vocab;
    const float target_logit = row[targets[size_t(r)]];
    const float max = *std::max_element(row, row + vocab);
    // One exp per logit, kept for the gradient: softmax = exp(logit − max) / sum.
    double sum = 0;
    for (int64_t v = 0; v < vocab; ++v) {
      row[v] = std::exp(row[v] - max);
      sum += row[v];
    }
    row_loss[size_t(r)] = std::log(sum) + max - target_logit;
    if (backward) {
      const float scale = float(double(grad_scale) / (sum * double(n)));
      for (int64_t v = 0; v < vocab; ++v) row[v] *= scale;
      row[targets[size_t(r)]] -= grad_scale / float(n);
    }
  }
  });
  double total = 0;
  for (const double v : row_loss) total += v;
  result.cross_entropy = total / double(n);
  result.loss = result.cross_entropy + aux_weight * result.balance;
  if (!backward) return result;

  // Backward.
  std::vector<float> d_normed(size_t(n * hidden), 0.0f), dx(size_t(n * hidden), 0.0f);
  linear_backward(final_normed_.data(), logits_.data(), n, p.value(head_name), vocab, hidden, d_normed.data(),
                  p.grad(head_name));
  rmsnorm_backward(final_in_.data(), hidden, p.value("model.norm.weight"), final_inv_rms_.data(), d_normed.data(), n,
                   hidden, dx.data(), p.grad("model.norm.weight"));
  const double aux_scale = aux_weight * grad_scale;
  for (int64_t l = c.num_hidden_layers - 1; l >= 0; --l) {
    LayerSaved& s = layers_[recompute_ ? 0 : size_t(l)];
    if (recompute_) {
      std::vector<float> x_again(layer_inputs_[size_t(l)].begin(), layer_inputs_[size_t(l)].end());
      layer_slab_.rewind();
      forward_layer(p, l, batch, seq, x_again, layer_slab_, s, nullptr);
    }
    backward_layer(p, l, batch, seq, aux_scale, s, dx);
  }
  float* d_embed = p.grad("model.embed_tokens.weight");
  for (int64_t r = 0; r < n; ++r) {
    float* row = d_embed + int64_t(inputs[size_t(r)]) * hidden;
    for (int64_t h = 0; h < hidden; ++h) row[h] += dx[size_t(r * hidden + h)];
  }
  return result;
}

void TrainGraph::forward_layer(Parameters& p, int64_t l, int64_t batch, int64_t seq, std::vector<float>& x,
                               ActivationSlab& slab, LayerSaved& s, StepLoss* result) {
  const Config& c = config_;
  const int64_t n = batch * seq, hidden = c.hidden_size;
  const float eps = float(c.rms_norm_eps);
  const std::string prefix = fmt::format("model.layers.{}.", l);
  std::vector<float> branch(size_t(n * hidden));
  s = LayerSaved{};
  s.x_in = slab.take(x.size());
  std::copy(x.begin(), x.end(), s.x_in.begin());
  s.inv_rms1 = slab.take(size_t(n));
  s.normed1 = slab.take(size_t(n * hidden));
  rmsnorm_forward(x.data(), hidden, p.value(prefix + "input_layernorm.weight"), n, hidden, eps, s.normed1.data(),
                  s.inv_rms1.data());
  mla_train_forward(c, p, prefix + "self_attn.", s.normed1.data(), batch, seq, rope_, slab, s.mla, branch.data());
  for (size_t i = 0; i < x.size(); ++i) x[i] += branch[i];
  s.h = slab.take(x.size());
  std::copy(x.begin(), x.end(), s.h.begin());
  s.inv_rms2 = slab.take(size_t(n));
  s.normed2 = slab.take(size_t(n * hidden));
  rmsnorm_forward(x.data(), hidden, p.value(prefix + "post_attention_layernorm.weight"), n, hidden, eps,
                  s.normed2.data(), s.inv_rms2.data());
  if (c.is_moe_layer(l)) {
    moe_train_forward(c, p, prefix + "mlp.", s.normed2.data(), batch, seq, slab, s.moe, branch.data());
    if (result != nullptr) {
      result->balance += s.moe.aux_loss;
      result->expert_counts.push_back(s.moe.counts);
    }
  } else {
    const std::string m = prefix + "mlp.";
    s.mlp = MlpSaved::take(slab, n, c.intermediate_size);
    mlp_forward({p.value(m + "gate_proj.weight"), p.value(m + "up_proj.weight"), p.value(m + "down_proj.weight"),
                 nullptr, nullptr, nullptr, hidden, c.intermediate_size},
                s.normed2.data(), n, s.mlp, branch.data());
  }
  for (size_t i = 0; i < x.size(); ++i) x[i] += branch[i];
}

void TrainGraph::backward_layer(Parameters& p, int64_t l, int64_t batch, int64_t seq, double aux_scale, LayerSaved& s,
                                std::vector<float>& dx) {
  const Config& c = config_;
  const int64_t n = batch * seq, hidden = c.hidden_size;
  const std::string prefix = fmt::format("model.layers.{}.", l);
  // x_out = h + ffn(norm2(h)):  dh = dx + d ffn path
  std::vector<float> d_normed(size_t(n * hidden), 0.0f);
  if (c.is_moe_layer(l)) {
    moe_train_backward(c, p, prefix + "mlp.", s.normed2.data(), batch, seq, aux_scale, s.moe, dx.data(),
                       d_normed.data());
  } else {
    const std::string m = prefix + "mlp.";
    mlp_backward({p.value(m + "gate_proj.weight"), p.value(m + "up_proj.weight"), p.value(m + "down_proj.weight"),
                  p.grad(m + "gate_proj.weight"), p.grad(m + "up_proj.weight"), p.grad(m + "down_proj.weight"),
                  hidden, c.intermediate_size},
                 s.normed2.data(), n, s.mlp, dx.data(), d_normed.data());
  }
  rmsnorm_backward(s.h.data(), hidden, p.value(prefix + "post_attention_layernorm.weight"), s.inv_rms2.data(),
                   d_normed.data(), n, hidden, dx.data(), p.grad(prefix + "post_attention_layernorm.weight"));
  // h = x_in + mla(norm1(x_in))
  std::fill(d_normed.begin(), d_normed.end(), 0.0f);
  mla_train_backward(c, p, prefix + "self_attn.", s.normed1.data(), batch, seq, rope_, s.mla, dx.data(),
                     d_normed.data());
  rmsnorm_backward(s.x_in.data(), hidden, p.value(prefix + "input_layernorm.weight"), s.inv_rms1.data(),
                   d_normed.data(), n, hidden, dx.data(), p.grad(prefix + "input_layernorm.weight"));
}

size_t TrainGraph::activation_bytes() const { return slab_.bytes() + layer_slab_.bytes(); }

}  // namespace deepmoe::train
