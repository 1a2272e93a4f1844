#include "train/model_train.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "kernels/gemm_bf16.h"
#include "model/embedding.h"
#include "model/gradients.h"
#include "model/mtp.h"
#include "model/router.h"

namespace deepmoe::train {

namespace {

ContextOptions with_precision(GemmPrecision precision) {
  ContextOptions options;
  options.precision = precision;
  return options;
}

}  // namespace

TrainGraph::TrainGraph(const Config& config, int n_threads, GemmPrecision precision, bool recompute,
                       ExpertGroup* expert_group, bool bf16_kept_by_caller)
    : config_(config),
      context_(n_threads, with_precision(precision)),
      recompute_(recompute),
      expert_group_(expert_group),
      bf16_kept_by_caller_(bf16_kept_by_caller) {
  if (precision == GemmPrecision::BF16 && !cpu_has_bf16_gemm()) fail("bf16 training needs a CPU with AVX512-BF16");
}

void TrainGraph::bind(const Parameters& p) {
  const float* values = p.values().data();
  const float* grads = p.grads().data();
  const bool bf16 = context_.precision() == GemmPrecision::BF16;
  if (bf16) bf16_bits_.resize(p.values().size());
  if (values != bound_values_ || grads != bound_grads_ || (bf16 && bf16_bits_.data() != bound_bf16_)) {
    values_ = ModelWeights::view_f32(config_, values, p.list_offsets());
    grads_ = ModelWeights::view_f32(config_, grads, p.list_offsets());
    if (bf16) bf16_ = ModelWeights::view_f32(config_, values, p.list_offsets(), bf16_bits_.data());
    bound_values_ = values;
    bound_grads_ = grads;
    bound_bf16_ = bf16_bits_.data();
  }
  // The weights may have changed since the last call (optimizer step, resume): a fresh bf16 copy,
  // unless the caller keeps it.
  if (bf16 && !bf16_kept_by_caller_) refresh_bf16(p, 0, p.values().size());
}

void TrainGraph::refresh_bf16(const Parameters& p, size_t begin, size_t end) {
  bf16_bits_.resize(p.values().size());
  const float* values = p.values().data();
  constexpr int64_t kChunk = 1 << 16;
  context_.pool().parallel_for(int64_t(end - begin), kChunk, [&](int64_t b, int64_t e) {
    convert_f32_to_bf16(values + begin + size_t(b), bf16_bits_.data() + begin + size_t(b), size_t(e - b));
  });
}

DecoderSaved TrainGraph::take_layer(int64_t layer, ActivationSlab& slab, int64_t batch, int64_t seq) const {
  DecoderSaved saved = DecoderSaved::take(config_, values_->layers[size_t(layer)], slab, batch, seq);
  saved.moe.parallel.group = expert_group_;
  return saved;
}

namespace {

// The targets' log-probabilities from logits [targets.size(), vocab], keeping one exp per logit
// for the gradient: each row becomes exp(logit − max), sums[r] its sum (softmax = row / sum).
void target_logprobs(const Context& ctx, float* logits, std::span<const int32_t> targets, int64_t vocab,
                     std::vector<double>& logprob, std::vector<double>& sums) {
  const int64_t n = int64_t(targets.size());
  logprob.assign(size_t(n), 0.0);
  sums.assign(size_t(n), 0.0);
  ctx.pool().parallel_for(n, 8, [&](int64_t r_begin, int64_t r_end) {
    for (int64_t r = r_begin; r < r_end; ++r) {
      float* row = logits + r * vocab;
      const float target_logit = row[targets[size_t(r)]];
      const float max = *std::max_element(row, row + vocab);
      double sum = 0;
      for (int64_t v = 0; v < vocab; ++v) {
        row[v] = std::exp(row[v] - max);
        sum += row[v];
      }
      sums[size_t(r)] = sum;
      logprob[size_t(r)] = double(target_logit) - double(max) - std::log(sum);
    }
  });
}

// target_logprobs' rows become d loss / d logits = g × (onehot − softmax), g = grad_scale ×
// gradient[r] (d loss / d log p(target)).
void logit_gradients(const Context& ctx, float* logits, std::span<const int32_t> targets, int64_t vocab,
                     const std::vector<double>& sums, const std::vector<double>& gradient, float grad_scale) {
  ctx.pool().parallel_for(int64_t(targets.size()), 8, [&](int64_t r_begin, int64_t r_end) {
    for (int64_t r = r_begin; r < r_end; ++r) {
      float* row = logits + r * vocab;
      const double g = double(grad_scale) * gradient[size_t(r)];
      const float scale = float(-g / sums[size_t(r)]);
      // The target's g (1 − p) from the other tokens' mass: 1 − p in f32 is all rounding when the
      // model is sure (p = 1 − 1e-6 leaves 6% of it).
      const double others = sums[size_t(r)] - double(row[targets[size_t(r)]]);
      for (int64_t v = 0; v < vocab; ++v) row[v] *= scale;
      row[targets[size_t(r)]] = float(g * others / sums[size_t(r)]);
    }
  });
}

}  // namespace

double mean_cross_entropy(std::span<const double> logprobs, std::span<double> gradient) {
  const double n = double(logprobs.size());
  double total = 0;
  for (size_t r = 0; r < logprobs.size(); ++r) {
    total -= logprobs[r];
    gradient[r] = -1.0 / n;
  }
  return total / n;
}

StepLoss TrainGraph::run(Parameters& p, std::span<const int32_t> inputs, std::span<const int32_t> targets,
                         int64_t batch, int64_t seq, double aux_weight, bool backward, float grad_scale,
                         const GradientsReady& ready, const TokenObjective& objective, std::vector<double>* logprobs) {
  const Config& c = config_;
  const int64_t n = batch * seq, hidden = c.hidden_size, vocab = c.vocab_size;
  const float eps = float(c.rms_norm_eps);
  if (int64_t(inputs.size()) != n || int64_t(targets.size()) != n) fail("train: batch shape mismatch");
  for (const auto ids : {inputs, targets})
    for (const int32_t id : ids)
      if (id < 0 || id >= vocab) fail("token id {} is outside the vocabulary [0, {})", id, vocab);
  bind(p);
  const ModelWeights& forward_weights = context_.precision() == GemmPrecision::BF16 ? *bf16_ : *values_;
  // Every sequence from position 0: the rope table holds each token's angles, in batch order.
  if (int64_t(positions_.size()) != n) {
    positions_.resize(size_t(n));
    for (int64_t r = 0; r < n; ++r) positions_[size_t(r)] = r % seq;
    rope_.compute(c, positions_);
  }
  std::vector<BatchSequence> sequences;
  for (int64_t b = 0; b < batch; ++b)
    sequences.push_back({inputs.subspan(size_t(b * seq), size_t(seq)), 0, LogitsFor::None});
  layers_.resize(recompute_ ? 1 : size_t(c.num_hidden_layers));
  if (recompute_) layer_inputs_.resize(size_t(c.num_hidden_layers));
  StepLoss result;

  // Forward.
  std::vector<float> x(size_t(n * hidden));
  embed_forward(values_->embed_tokens, inputs, x.data());
  slab_.rewind();
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    if (recompute_) {
      layer_inputs_[size_t(l)] = slab_.take(x.size());
      std::copy(x.begin(), x.end(), layer_inputs_[size_t(l)].begin());
      layer_slab_.rewind();
    }
    DecoderSaved& saved = layers_[recompute_ ? 0 : size_t(l)];
    saved = take_layer(l, recompute_ ? layer_slab_ : slab_, batch, seq);
    decoder_forward(context_, c, forward_weights.layers[size_t(l)], l, sequences, rope_, nullptr, std::nullopt,
                    scratch_, &saved, x.data());
    if (c.is_moe_layer(l)) {
      const MoeRouting& routing = saved.moe.routing;
      result.balance += balance_loss(c, saved.moe.scores.data(), routing.chosen.data(), batch, seq);
      std::vector<int32_t>& counts = result.expert_counts.emplace_back(size_t(c.n_routed_experts));
      for (size_t e = 0; e < counts.size(); ++e) counts[e] = routing.expert_begin[e + 1] - routing.expert_begin[e];
    }
  }
  final_in_ = slab_.take(x.size());
  std::copy(x.begin(), x.end(), final_in_.begin());
  final_inv_rms_ = slab_.take(size_t(n));
  final_normed_ = slab_.take(size_t(n * hidden));
  logits_ = slab_.take(size_t(n * vocab));
  head_forward(context_, forward_weights.lm_head, values_->norm, eps, x.data(), n, final_normed_.data(),
               final_inv_rms_.data(), logits_.data());

  std::vector<double> logprob, sums;
  target_logprobs(context_, logits_.data(), targets, vocab, logprob, sums);
  std::vector<double> gradient(static_cast<size_t>(n), 0.0);
  result.cross_entropy = objective ? objective(logprob, gradient) : mean_cross_entropy(logprob, gradient);
  result.loss = result.cross_entropy + aux_weight * result.balance;
  if (logprobs) *logprobs = logprob;
  if (!backward) return result;
  // The MTP modules train with the pretraining loss only; SFT, DPO and GRPO carry them unchanged.
  const bool train_mtp = mtp_weight_ > 0 && !objective && c.num_nextn_predict_layers > 0;
  mtp_.clear();
  if (train_mtp) mtp_forward(forward_weights, targets, batch, seq, result);
  logit_gradients(context_, logits_.data(), targets, vocab, sums, gradient, grad_scale);

  // Backward: the MTP depths first (their gradient reaches the main model through its normed
  // output), then the head and the layers.
  const std::vector<float> d_hidden =
      train_mtp ? mtp_backward(forward_weights, batch, seq, aux_weight, grad_scale) : std::vector<float>();
  if (ready)  // the MTP modules' experts (their dense tensors follow the head, reported with it)
    for (int64_t l = c.num_hidden_layers; l < c.layer_count(); ++l)
      if (c.is_moe_layer(l)) ready(p.expert_range(l).first, p.expert_range(l).second);
  std::vector<float> dx(size_t(n * hidden), 0.0f);
  head_backward(context_, forward_weights.lm_head, values_->norm, final_in_.data(), n, final_inv_rms_.data(),
                final_normed_.data(), logits_.data(), grad_data(grads_->lm_head), grad_data(grads_->norm), dx.data(),
                d_hidden.empty() ? nullptr : d_hidden.data());
  // The tensors past the layers (final norm, untied head, MTP modules); a tied head's gradient
  // lands in the embedding's, which is reported last.
  const size_t layers_begin = c.num_hidden_layers > 0 ? p.layer_range(0).first : p.dense_size();
  const size_t layers_end = c.num_hidden_layers > 0 ? p.layer_range(c.num_hidden_layers - 1).second : layers_begin;
  if (ready) ready(layers_end, p.dense_size());
  for (int64_t l = c.num_hidden_layers - 1; l >= 0; --l) {
    DecoderSaved& saved = layers_[recompute_ ? 0 : size_t(l)];
    const LayerWeights& w = forward_weights.layers[size_t(l)];
    if (recompute_) {
      std::vector<float> x_again(layer_inputs_[size_t(l)].begin(), layer_inputs_[size_t(l)].end());
      layer_slab_.rewind();
      saved = take_layer(l, layer_slab_, batch, seq);
      decoder_forward(context_, c, w, l, sequences, rope_, nullptr, std::nullopt, scratch_, &saved, x_again.data());
    }
    decoder_backward(context_, c, w, grads_->layers[size_t(l)], batch, rope_, aux_weight, saved, dx.data());
    if (ready) {
      if (c.is_moe_layer(l)) ready(p.expert_range(l).first, p.expert_range(l).second);
      ready(p.layer_range(l).first, p.layer_range(l).second);
    }
  }
  embed_backward(inputs, dx.data(), hidden, grad_data(grads_->embed_tokens));
  if (ready) ready(0, layers_begin);
  return result;
}

void TrainGraph::mtp_forward(const ModelWeights& forward_weights, std::span<const int32_t> targets, int64_t batch,
                             int64_t seq, StepLoss& result) {
  const Config& c = config_;
  const int64_t hidden = c.hidden_size, vocab = c.vocab_size, depths = c.num_nextn_predict_layers;
  const float eps = float(c.rms_norm_eps);
  mtp_rope_.resize(size_t(depths));
  mtp_rope_rows_.resize(size_t(depths), -1);
  double total = 0;
  for (int64_t k = 1; k <= depths && k < seq; ++k) {
    MtpDepth& d = mtp_.emplace_back();
    const int64_t m = k - 1, layer = c.num_hidden_layers + m;
    d.seq = seq - k;
    d.rows = batch * d.seq;
    // Position i of a sequence embeds t_{i+k} (targets[i + k − 1]) and predicts t_{i+k+1}.
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t i = 0; i < d.seq; ++i) {
        d.next.push_back(targets[size_t(b * seq + i + k - 1)]);
        d.targets.push_back(targets[size_t(b * seq + i + k)]);
      }
    // h^{k−1}_i: the main model's normed output at i, or the previous depth's (after its
    // shared_head.norm, as a draft step hands it on) at i.
    d.h_in = slab_.take(size_t(d.rows * hidden));
    const int64_t prev_seq = k == 1 ? seq : mtp_[size_t(k - 2)].seq;
    const float* prev = k == 1 ? final_normed_.data() : mtp_[size_t(k - 2)].z.data();
    for (int64_t b = 0; b < batch; ++b)
      std::copy_n(prev + b * prev_seq * hidden, d.seq * hidden, d.h_in.data() + b * d.seq * hidden);
    d.joined = slab_.take(size_t(d.rows * 2 * hidden));
    d.inv_rms = slab_.take(size_t(2 * d.rows));
    d.y = slab_.take(size_t(d.rows * hidden));
    mtp_input_forward(context_, c, forward_weights.mtp[size_t(m)], values_->embed_tokens, d.next, d.h_in.data(), d.rows,
                      d.joined.data(), d.inv_rms.data(), d.y.data());
    // Every sequence from position 0 again, seq − k of them.
    if (mtp_rope_rows_[size_t(m)] != d.rows) {
      std::vector<int64_t> positions(size_t(d.rows));
      for (int64_t r = 0; r < d.rows; ++r) positions[size_t(r)] = r % d.seq;
      mtp_rope_[size_t(m)].compute(c, positions);
      mtp_rope_rows_[size_t(m)] = d.rows;
    }
    std::vector<BatchSequence> sequences;
    for (int64_t b = 0; b < batch; ++b)
      sequences.push_back(
          {std::span<const int32_t>(d.next).subspan(size_t(b * d.seq), size_t(d.seq)), 0, LogitsFor::None});
    d.block = take_layer(layer, slab_, batch, d.seq);
    decoder_forward(context_, c, forward_weights.layers[size_t(layer)], layer, sequences, mtp_rope_[size_t(m)], nullptr,
                    std::nullopt, scratch_, &d.block, d.y.data());
    if (c.is_moe_layer(layer)) {
      const MoeRouting& routing = d.block.moe.routing;
      result.balance += balance_loss(c, d.block.moe.scores.data(), routing.chosen.data(), batch, d.seq);
      std::vector<int32_t>& counts = result.expert_counts.emplace_back(size_t(c.n_routed_experts));
      for (size_t e = 0; e < counts.size(); ++e) counts[e] = routing.expert_begin[e + 1] - routing.expert_begin[e];
    }
    d.head_inv_rms = slab_.take(size_t(d.rows));
    d.z = slab_.take(size_t(d.rows * hidden));
    d.logits = slab_.take(size_t(d.rows * vocab));
    head_forward(context_, forward_weights.lm_head, values_->mtp[size_t(m)].shared_head_norm, eps, d.y.data(), d.rows,
                 d.z.data(), d.head_inv_rms.data(), d.logits.data());
    std::vector<double> logprob;
    target_logprobs(context_, d.logits.data(), d.targets, vocab, logprob, d.sums);
    // L_MTP = λ / D Σ_k mean CE_k (DeepSeek-V3 eq. 25).
    d.gradient.assign(size_t(d.rows), -mtp_weight_ / double(depths) / double(d.rows));
    double ce = 0;
    for (const double lp : logprob) ce -= lp;
    total += ce / double(d.rows);
  }
  result.mtp_cross_entropy = total / double(depths);
  result.loss += mtp_weight_ * result.mtp_cross_entropy;
}

std::vector<float> TrainGraph::mtp_backward(const ModelWeights& forward_weights, int64_t batch, int64_t seq,
                                            double aux_weight, float grad_scale) {
  const Config& c = config_;
  const int64_t hidden = c.hidden_size, vocab = c.vocab_size;
  std::vector<float> d_next_z;  // ∂loss/∂(depth k's z) from depth k + 1, [rows_k, hidden]
  std::vector<float> d_main(size_t(batch * seq * hidden), 0.0f);
  for (int64_t k = int64_t(mtp_.size()); k >= 1; --k) {
    MtpDepth& d = mtp_[size_t(k - 1)];
    const int64_t m = k - 1, layer = c.num_hidden_layers + m;
    logit_gradients(context_, d.logits.data(), d.targets, vocab, d.sums, d.gradient, grad_scale);
    std::vector<float> dy(size_t(d.rows * hidden), 0.0f);
    head_backward(context_, forward_weights.lm_head, values_->mtp[size_t(m)].shared_head_norm, d.y.data(), d.rows,
                  d.head_inv_rms.data(), d.z.data(), d.logits.data(), grad_data(grads_->lm_head),
                  grad_data(grads_->mtp[size_t(m)].shared_head_norm), dy.data(),
                  d_next_z.empty() ? nullptr : d_next_z.data());
    decoder_backward(context_, c, forward_weights.layers[size_t(layer)], grads_->layers[size_t(layer)], batch,
                     mtp_rope_[size_t(m)], aux_weight, d.block, dy.data());
    std::vector<float> dh(size_t(d.rows * hidden), 0.0f);
    mtp_input_backward(context_, c, forward_weights.mtp[size_t(m)], grads_->mtp[size_t(m)], values_->embed_tokens,
                       grad_data(grads_->embed_tokens), d.next, d.h_in.data(), d.rows, d.joined.data(),
                       d.inv_rms.data(), dy.data(), dh.data());
    // Back to the rows of the depth before: row (b, i) of this depth is its row (b, i).
    const int64_t prev_seq = k == 1 ? seq : mtp_[size_t(k - 2)].seq;
    std::vector<float> previous(size_t(batch * prev_seq * hidden), 0.0f);
    for (int64_t b = 0; b < batch; ++b)
      std::copy_n(dh.data() + b * d.seq * hidden, d.seq * hidden, previous.data() + b * prev_seq * hidden);
    if (k == 1) d_main = std::move(previous);
    else d_next_z = std::move(previous);
  }
  return d_main;
}

size_t TrainGraph::activation_bytes() const { return slab_.bytes() + layer_slab_.bytes(); }

}  // namespace deepmoe::train
