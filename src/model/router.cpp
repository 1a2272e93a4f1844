#include "model/router.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "kernels/ops.h"

namespace deepmoe {

namespace {

// Indices of the k largest values (descending; equal values keep the lower index first).
void top_k(const float* values, int64_t n, int64_t k, int32_t* out, std::vector<int32_t>& order) {
  order.resize(size_t(n));
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [&](int32_t a, int32_t b) { return values[a] > values[b] || (values[a] == values[b] && a < b); });
  std::copy_n(order.begin(), k, out);
}

// The scores of all experts from the gate logits: softmax over experts, or each one's sigmoid.
void score(const Config& c, const float* gate_logits, float* scores) {
  const int64_t n = c.n_routed_experts;
  if (c.scoring_func == ScoringFunc::Softmax) {
    std::copy_n(gate_logits, n, scores);
    softmax_inplace(scores, n);
  } else {
    for (int64_t e = 0; e < n; ++e) scores[e] = 1.0f / (1.0f + std::exp(-gate_logits[e]));
  }
}

// Whether the combine weights are renormalized over the chosen experts, and whether they are
// then scaled by routed_scaling_factor (V3 does both; V2 renormalizes or scales, never both).
bool normalizes(const Config& c) { return c.num_experts_per_tok > 1 && c.norm_topk_prob; }
bool scales(const Config& c) { return c.v3_routing_rule() || !normalizes(c); }

// The scores as the balance loss's Pᵢ sees them: normalized over all experts.
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

void route_token(const Config& c, const float* gate_logits, const float* bias, int32_t* experts, float* weights,
                 RouterScratch& s, float* scores_out) {
  const int64_t n = c.n_routed_experts, k = c.num_experts_per_tok;
  s.scores.resize(size_t(n));
  s.choice.resize(size_t(n));
  float* scores = scores_out ? scores_out : s.scores.data();
  score(c, gate_logits, scores);
  // The bias steers selection only (aux-loss-free balancing); weights use the raw scores.
  for (int64_t e = 0; e < n; ++e) s.choice[size_t(e)] = scores[e] + (bias ? bias[e] : 0.0f);

  if (c.topk_method != TopkMethod::Greedy && c.n_group > 1) {
    const int64_t per_group = n / c.n_group;
    s.group_score.resize(size_t(c.n_group));
    for (int64_t g = 0; g < c.n_group; ++g) {
      const float* member = s.choice.data() + g * per_group;
      if (c.topk_method == TopkMethod::GroupLimitedGreedy) {
        s.group_score[size_t(g)] = *std::max_element(member, member + per_group);
      } else {  // noaux_tc: a group is as good as its two best experts
        int32_t best[2];
        top_k(member, per_group, 2, best, s.order);
        s.group_score[size_t(g)] = member[best[0]] + member[best[1]];
      }
    }
    s.kept_groups.resize(size_t(c.topk_group));
    top_k(s.group_score.data(), c.n_group, c.topk_group, s.kept_groups.data(), s.order);
    for (int64_t e = 0; e < n; ++e) {
      const int32_t group = int32_t(e / per_group);
      if (std::find(s.kept_groups.begin(), s.kept_groups.end(), group) == s.kept_groups.end())
        s.choice[size_t(e)] = -INFINITY;
    }
  }
  top_k(s.choice.data(), n, k, experts, s.order);

  double sum = 0.0;
  for (int64_t i = 0; i < k; ++i) sum += scores[experts[i]];
  for (int64_t i = 0; i < k; ++i) {
    double weight = scores[experts[i]];
    if (normalizes(c)) weight /= sum + 1e-20;
    if (scales(c)) weight *= c.routed_scaling_factor;
    weights[i] = float(weight);
  }
}

void route_token(const Config& c, const float* gate_logits, const float* bias, int32_t* experts, float* weights) {
  RouterScratch scratch;
  route_token(c, gate_logits, bias, experts, weights, scratch);
}

double balance_loss(const Config& c, const float* scores, const int32_t* chosen, int64_t batch, int64_t seq) {
  const int64_t e = c.n_routed_experts, k = c.num_experts_per_tok;
  double loss = 0;
  std::vector<float> probs(static_cast<size_t>(e));
  std::vector<double> count(static_cast<size_t>(e)), mean_prob(static_cast<size_t>(e));
  for (int64_t b = 0; b < batch; ++b) {
    std::fill(count.begin(), count.end(), 0.0);
    std::fill(mean_prob.begin(), mean_prob.end(), 0.0);
    for (int64_t t = 0; t < seq; ++t) {
      const int64_t r = b * seq + t;
      balance_probabilities(c, scores + r * e, probs.data());
      for (int64_t i = 0; i < e; ++i) mean_prob[size_t(i)] += probs[size_t(i)] / double(seq);
      for (int64_t j = 0; j < k; ++j) count[size_t(chosen[r * k + j])] += 1;
    }
    for (int64_t i = 0; i < e; ++i)
      loss += double(e) / double(k * seq) * count[size_t(i)] * mean_prob[size_t(i)] / double(batch);
  }
  return loss;
}

void router_backward(const Config& c, const float* scores_all, const int32_t* chosen_all, const float* d_weights,
                     int64_t batch, int64_t seq, double aux_weight, float* d_logits) {
  const int64_t n = batch * seq, e = c.n_routed_experts, k = c.num_experts_per_tok;
  const float factor = scales(c) ? float(c.routed_scaling_factor) : 1.0f;
  // Combine weights -> scores.
  std::vector<float> d_scores(size_t(n * e), 0.0f);
  for (int64_t r = 0; r < n; ++r) {
    const float* scores = scores_all + r * e;
    const int32_t* chosen = chosen_all + r * k;
    const float* dw = d_weights + r * k;
    float* ds = d_scores.data() + r * e;
    if (normalizes(c)) {
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
    std::vector<double> count(static_cast<size_t>(e)), d_prob(static_cast<size_t>(e));
    for (int64_t b = 0; b < batch; ++b) {
      std::fill(count.begin(), count.end(), 0.0);
      for (int64_t t = 0; t < seq; ++t)
        for (int64_t j = 0; j < k; ++j) count[size_t(chosen_all[(b * seq + t) * k + j])] += 1;
      for (int64_t i = 0; i < e; ++i)
        d_prob[size_t(i)] = aux_weight * double(e) / double(k * seq) * count[size_t(i)] / double(batch) / double(seq);
      for (int64_t t = 0; t < seq; ++t) {
        const int64_t r = b * seq + t;
        const float* scores = scores_all + r * e;
        float* ds = d_scores.data() + r * e;
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
  // Scores -> gate logits.
  for (int64_t r = 0; r < n; ++r) {
    const float* scores = scores_all + r * e;
    const float* ds = d_scores.data() + r * e;
    float* dl = d_logits + r * e;
    if (c.scoring_func == ScoringFunc::Softmax) {
      double dot = 0;
      for (int64_t i = 0; i < e; ++i) dot += double(ds[i]) * scores[i];
      for (int64_t i = 0; i < e; ++i) dl[i] = scores[i] * (ds[i] - float(dot));
    } else {
      for (int64_t i = 0; i < e; ++i) dl[i] = ds[i] * scores[i] * (1.0f - scores[i]);
    }
  }
}

}  // namespace deepmoe
