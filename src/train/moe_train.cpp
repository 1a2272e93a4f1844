#include "train/moe_train.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "kernels/ops.h"
#include "model/moe.h"

namespace deepmoe::train {

namespace {

MlpTensors expert_tensors(Parameters& p, const std::string& prefix, int64_t hidden, int64_t intermediate) {
  return {p.value(prefix + "gate_proj.weight"), p.value(prefix + "up_proj.weight"), p.value(prefix + "down_proj.weight"),
          p.grad(prefix + "gate_proj.weight"),  p.grad(prefix + "up_proj.weight"),  p.grad(prefix + "down_proj.weight"),
          hidden, intermediate};
}

// Whether the routed weights are renormalized over the selected experts, and the factor after.
void weight_rule(const Config& c, bool& normalize, float& factor) {
  const int64_t k = c.num_experts_per_tok;
  const float rsf = float(c.routed_scaling_factor);
  if (c.model_type == "deepseek_v3") {
    normalize = k > 1 && c.norm_topk_prob;
    factor = rsf;
  } else {  // DeepSeek-V2: renormalize or scale, never both
    normalize = k > 1 && c.norm_topk_prob;
    factor = normalize ? 1.0f : rsf;
  }
}

// Scores normalized over all experts, as the balance loss's Pᵢ uses them.
void balance_probabilities(const Config& c, const float* scores, float* out) {
  const int64_t e = c.n_routed_experts;
  if (c.scoring_func == ScoringFunc::Softmax) {
    std::copy_n(scores, e, out);
    return;
  }
  double sum = 0;
  for (int64_t i = 0; i < e; ++i) sum += scores[i];
  for (int64_t i = 0; i < e; ++i) out[i] = float(scores[i] / sum);
}

}  // namespace

void moe_train_forward(const Config& c, Parameters& p, const std::string& prefix, const float* x, int64_t batch,
                       int64_t seq, ActivationSlab& slab, MoeSaved& s, float* out) {
  const int64_t n = batch * seq, e = c.n_routed_experts, k = c.num_experts_per_tok, hidden = c.hidden_size;
  std::vector<float> logits(size_t(n * e));
  linear_forward(x, n, p.value(prefix + "gate.weight"), e, hidden, logits.data());
  const float* bias = p.value(prefix + "gate.e_score_correction_bias");
  s.scores = slab.take(size_t(n * e));
  s.chosen.resize(size_t(n * k));
  s.weights = slab.take(size_t(n * k));
  s.counts.assign(size_t(e), 0);
  bool normalize;
  float factor;
  weight_rule(c, normalize, factor);
  std::vector<float> unused(static_cast<size_t>(k));
  for (int64_t r = 0; r < n; ++r) {
    float* scores = s.scores.data() + r * e;
    std::copy_n(logits.data() + r * e, e, scores);
    if (c.scoring_func == ScoringFunc::Softmax) {
      softmax_inplace(scores, e);
    } else {
      for (int64_t i = 0; i < e; ++i) scores[i] = 1.0f / (1.0f + std::exp(-scores[i]));
    }
    // Selection exactly as inference makes it; the weights are recomputed here from the scores
    // so that backward differentiates the very same formula.
    route_token(c, logits.data() + r * e, bias, s.chosen.data() + r * k, unused.data());
    double sum = 0;
    for (int64_t j = 0; j < k; ++j) sum += scores[s.chosen[size_t(r * k + j)]];
    for (int64_t j = 0; j < k; ++j) {
      const float score = scores[s.chosen[size_t(r * k + j)]];
      s.weights[size_t(r * k + j)] = normalize ? float(score / (sum + 1e-20)) * factor : score * factor;
      ++s.counts[size_t(s.chosen[size_t(r * k + j)])];
    }
  }

  // Routed experts on their tokens.
  std::fill(out, out + n * hidden, 0.0f);
  s.rows.assign(size_t(e), {});
  s.slots.assign(size_t(e), {});
  s.inputs.assign(size_t(e), {});
  s.outputs.assign(size_t(e), {});
  s.experts.assign(size_t(e), {});
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < k; ++j) {
      const int32_t expert = s.chosen[size_t(r * k + j)];
      s.rows[size_t(expert)].push_back(int32_t(r));
      s.slots[size_t(expert)].push_back(int32_t(j));
    }
  // Carved in expert order before the parallel region (the slab is not thread-safe); the
  // experts share n·k rows between them, so the total is the same every step.
  for (int64_t ex = 0; ex < e; ++ex) {
    const int64_t m = int64_t(s.rows[size_t(ex)].size());
    if (m == 0) continue;
    s.inputs[size_t(ex)] = slab.take(size_t(m * hidden));
    s.outputs[size_t(ex)] = slab.take(size_t(m * hidden));
    s.experts[size_t(ex)] = MlpSaved::take(slab, m, c.moe_intermediate_size);
  }
  // Experts run in parallel (each on one thread); their outputs are combined afterwards, in
  // expert order, so the sums do not depend on the schedule.
  std::vector<MlpTensors> tensors;
  for (int64_t ex = 0; ex < e; ++ex)
    tensors.push_back(expert_tensors(p, fmt::format("{}experts.{}.", prefix, ex), hidden, c.moe_intermediate_size));
  training_pool().parallel_for(e, 1, [&](int64_t ex_begin, int64_t ex_end) {
    SerialLayers serial;
      for (int64_t ex = ex_begin; ex < ex_end; ++ex) {
        const auto& rows = s.rows[size_t(ex)];
        const int64_t m = int64_t(rows.size());
        if (m == 0) continue;
        const auto in = s.inputs[size_t(ex)];
        const auto y = s.outputs[size_t(ex)];
        for (int64_t i = 0; i < m; ++i) std::copy_n(x + rows[size_t(i)] * hidden, hidden, in.data() + i * hidden);
        mlp_forward(tensors[size_t(ex)], in.data(), m, s.experts[size_t(ex)], y.data());
      }
  });
  for (int64_t ex = 0; ex < e; ++ex) {
    const auto& rows = s.rows[size_t(ex)];
    const int64_t m = int64_t(rows.size());
    const auto y = s.outputs[size_t(ex)];
    for (int64_t i = 0; i < m; ++i) {
      const float w = s.weights[size_t(rows[size_t(i)] * k + s.slots[size_t(ex)][size_t(i)])];
      axpy(hidden, w, y.data() + i * hidden, out + rows[size_t(i)] * hidden);
    }
  }
  if (c.n_shared_experts > 0) {
    std::vector<float> shared(size_t(n * hidden));
    s.shared = MlpSaved::take(slab, n, c.moe_intermediate_size * c.n_shared_experts);
    mlp_forward(expert_tensors(p, prefix + "shared_experts.", hidden, c.moe_intermediate_size * c.n_shared_experts),
                x, n, s.shared, shared.data());
    for (size_t i = 0; i < shared.size(); ++i) out[i] += shared[i];
  }

  // Sequence-wise balance loss: per sequence Σᵢ fᵢ·Pᵢ with fᵢ = E/(K·T)·count_i, Pᵢ the mean
  // normalized score; averaged over the batch.
  s.aux_loss = 0;
  std::vector<float> probs(static_cast<size_t>(e));
  for (int64_t b = 0; b < batch; ++b) {
    std::vector<double> count(size_t(e), 0.0), mean_prob(size_t(e), 0.0);
    for (int64_t t = 0; t < seq; ++t) {
      const int64_t r = b * seq + t;
      balance_probabilities(c, s.scores.data() + r * e, probs.data());
      for (int64_t i = 0; i < e; ++i) mean_prob[size_t(i)] += probs[size_t(i)] / double(seq);
      for (int64_t j = 0; j < k; ++j) count[size_t(s.chosen[size_t(r * k + j)])] += 1;
    }
    for (int64_t i = 0; i < e; ++i)
      s.aux_loss += double(e) / double(k * seq) * count[size_t(i)] * mean_prob[size_t(i)] / double(batch);
  }
}

void moe_train_backward(const Config& c, Parameters& p, const std::string& prefix, const float* x, int64_t batch,
                        int64_t seq, double aux_weight, const MoeSaved& s, const float* d_out, float* dx) {
  const int64_t n = batch * seq, e = c.n_routed_experts, k = c.num_experts_per_tok, hidden = c.hidden_size;
  if (c.n_shared_experts > 0)
    mlp_backward(expert_tensors(p, prefix + "shared_experts.", hidden, c.moe_intermediate_size * c.n_shared_experts),
                 x, n, s.shared, d_out, dx);

  // Routed experts: d(expert output) = w·d_out, and d(w) = d_out · expert output.
  std::vector<float> d_weights(size_t(n * k), 0.0f);
  std::vector<std::vector<float>> d_inputs(static_cast<size_t>(e));
  training_pool().parallel_for(e, 1, [&](int64_t ex_begin, int64_t ex_end) {
  SerialLayers serial;
  for (int64_t ex = ex_begin; ex < ex_end; ++ex) {
    const auto& rows = s.rows[size_t(ex)];
    const int64_t m = int64_t(rows.size());
    if (m == 0) continue;
    std::vector<float> dy(size_t(m * hidden));
    auto& d_in = d_inputs[size_t(ex)];
    d_in.assign(size_t(m * hidden), 0.0f);
    for (int64_t i = 0; i < m; ++i) {
      const int64_t r = rows[size_t(i)], slot = s.slots[size_t(ex)][size_t(i)];
      const float w = s.weights[size_t(r * k + slot)];
      const float* g = d_out + r * hidden;
      const float* y = s.outputs[size_t(ex)].data() + i * hidden;
      double dot = 0;
      for (int64_t h = 0; h < hidden; ++h) {
        dy[size_t(i * hidden + h)] = w * g[h];
        dot += double(g[h]) * y[h];
      }
      d_weights[size_t(r * k + slot)] = float(dot);
    }
    mlp_backward(expert_tensors(p, fmt::format("{}experts.{}.", prefix, ex), hidden, c.moe_intermediate_size),
                 s.inputs[size_t(ex)].data(), m, s.experts[size_t(ex)], dy.data(), d_in.data());
  }
  });
  for (int64_t ex = 0; ex < e; ++ex) {  // in expert order: a fixed summation order
    const auto& rows = s.rows[size_t(ex)];
    for (size_t i = 0; i < rows.size(); ++i)
      axpy(hidden, 1.0f, d_inputs[size_t(ex)].data() + i * size_t(hidden), dx + rows[i] * hidden);
  }

  // Combine weights -> scores.
  bool normalize;
  float factor;
  weight_rule(c, normalize, factor);
  std::vector<float> d_scores(size_t(n * e), 0.0f);
  for (int64_t r = 0; r < n; ++r) {
    const float* scores = s.scores.data() + r * e;
    const int32_t* chosen = s.chosen.data() + r * k;
    const float* dw = d_weights.data() + r * k;
    float* ds = d_scores.data() + r * e;
    if (normalize) {
      double sum = 0, weighted = 0;
      for (int64_t j = 0; j < k; ++j) sum += scores[chosen[j]];
      sum += 1e-20;
      for (int64_t j = 0; j < k; ++j) weighted += double(dw[j]) * scores[chosen[j]];
      for (int64_t j = 0; j < k; ++j) ds[chosen[j]] += float(factor * (dw[j] / sum - weighted / (sum * sum)));
    } else {
      for (int64_t j = 0; j < k; ++j) ds[chosen[j]] += factor * dw[j];
    }
  }
  // Balance loss -> scores: d loss / d P_i = aux_weight · f_i / batch, P_i = mean over t.
  if (aux_weight > 0) {
    for (int64_t b = 0; b < batch; ++b) {
      std::vector<double> count(size_t(e), 0.0);
      for (int64_t t = 0; t < seq; ++t)
        for (int64_t j = 0; j < k; ++j) count[size_t(s.chosen[size_t((b * seq + t) * k + j)])] += 1;
      for (int64_t t = 0; t < seq; ++t) {
        const int64_t r = b * seq + t;
        const float* scores = s.scores.data() + r * e;
        float* ds = d_scores.data() + r * e;
        std::vector<double> d_prob(static_cast<size_t>(e));
        for (int64_t i = 0; i < e; ++i)
          d_prob[size_t(i)] = aux_weight * double(e) / double(k * seq) * count[size_t(i)] / double(batch) / double(seq);
        if (c.scoring_func == ScoringFunc::Softmax) {
          for (int64_t i = 0; i < e; ++i) ds[i] += float(d_prob[size_t(i)]);
        } else {  // P = s / Σs
          double sum = 0, weighted = 0;
          for (int64_t i = 0; i < e; ++i) sum += scores[i];
          for (int64_t i = 0; i < e; ++i) weighted += d_prob[size_t(i)] * scores[i];
          for (int64_t i = 0; i < e; ++i) ds[i] += float(d_prob[size_t(i)] / sum - weighted / (sum * sum));
        }
      }
    }
  }
  // Scores -> gate logits -> gate weight and input.
  std::vector<float> d_logits(size_t(n * e));
  for (int64_t r = 0; r < n; ++r) {
    const float* scores = s.scores.data() + r * e;
    const float* ds = d_scores.data() + r * e;
    float* dl = d_logits.data() + r * e;
    if (c.scoring_func == ScoringFunc::Softmax) {
      double dot = 0;
      for (int64_t i = 0; i < e; ++i) dot += double(ds[i]) * scores[i];
      for (int64_t i = 0; i < e; ++i) dl[i] = scores[i] * (ds[i] - float(dot));
    } else {
      for (int64_t i = 0; i < e; ++i) dl[i] = ds[i] * scores[i] * (1.0f - scores[i]);
    }
  }
  linear_backward(x, d_logits.data(), n, p.value(prefix + "gate.weight"), e, hidden, dx, p.grad(prefix + "gate.weight"));
}

}  // namespace deepmoe::train
