#include "model/moe.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "kernels/matmul.h"
#include "kernels/ops.h"

namespace deepmoe {

namespace {

// Indices of the k largest values (descending; equal values keep the lower index first).
void top_k(const float* values, int64_t n, int64_t k, int32_t* out) {
  int32_t order[1024];
  std::vector<int32_t> heap_order;
  int32_t* idx = order;
  if (n > 1024) {
    heap_order.resize(size_t(n));
    idx = heap_order.data();
  }
  std::iota(idx, idx + n, 0);
  std::partial_sort(idx, idx + k, idx + n, [&](int32_t a, int32_t b) {
    return values[a] > values[b] || (values[a] == values[b] && a < b);
  });
  std::copy(idx, idx + k, out);
}

}  // namespace

void route_token(const Config& c, const float* gate_logits, const float* bias, int32_t* experts,
                 float* weights) {
  const int64_t n = c.n_routed_experts, k = c.num_experts_per_tok;
  std::vector<float> scores(static_cast<size_t>(n)), choice(static_cast<size_t>(n));
  if (c.scoring_func == ScoringFunc::Softmax) {
    std::copy(gate_logits, gate_logits + n, scores.begin());
    softmax_inplace(scores.data(), n);
  } else {
    for (int64_t e = 0; e < n; ++e) scores[size_t(e)] = 1.0f / (1.0f + std::exp(-gate_logits[e]));
  }
  // The bias steers selection only (aux-loss-free balancing); weights use the raw scores.
  for (int64_t e = 0; e < n; ++e) choice[size_t(e)] = scores[size_t(e)] + (bias ? bias[e] : 0.0f);

  if (c.topk_method != TopkMethod::Greedy && c.n_group > 1) {
    const int64_t per_group = n / c.n_group;
    std::vector<float> group_score(size_t(c.n_group));
    for (int64_t g = 0; g < c.n_group; ++g) {
      const float* member = choice.data() + g * per_group;
      if (c.topk_method == TopkMethod::GroupLimitedGreedy) {
        group_score[size_t(g)] = *std::max_element(member, member + per_group);
      } else {  // noaux_tc: a group is as good as its two best experts
        int32_t best[2];
        top_k(member, per_group, 2, best);
        group_score[size_t(g)] = member[best[0]] + member[best[1]];
      }
    }
    std::vector<int32_t> kept(size_t(c.topk_group));
    top_k(group_score.data(), c.n_group, c.topk_group, kept.data());
    std::vector<bool> keep(size_t(c.n_group), false);
    for (int32_t g : kept) keep[size_t(g)] = true;
    for (int64_t e = 0; e < n; ++e)
      if (!keep[size_t(e / per_group)]) choice[size_t(e)] = -INFINITY;
  }
  top_k(choice.data(), n, k, experts);

  double sum = 0.0;
  for (int64_t i = 0; i < k; ++i) {
    weights[i] = scores[size_t(experts[i])];
    sum += weights[i];
  }
  const bool normalize = k > 1 && c.norm_topk_prob;
  const bool scale = c.v3_routing_rule() || !normalize;
  for (int64_t i = 0; i < k; ++i) {
    double weight = weights[i];
    if (normalize) weight /= sum + 1e-20;
    if (scale) weight *= c.routed_scaling_factor;
    weights[i] = float(weight);
  }
}

namespace {

// The batched path holds every (token, expert) slot's input and output at once; past this many
// slots (V3, hidden 7168: about 0.3 GB of buffers) the per-expert path's smaller ones win.
constexpr int64_t kMaxBatchedSlots = 4096;

// Each expert sees a few tokens (decode: one or two; a 128-token prompt with 16 experts top-2:
// about 16), so its three products are small and the pool's wake-ups would dominate. All gate
// and up projections (shared experts included) run as one batch, then all down projections:
// two wake-ups per layer instead of three per expert. The same products and the same order of
// the weighted sum as the per-expert path, so the results are identical.
void experts_batched(const Config& c, const MoeWeights& w, const float* x, int64_t n_tokens, MoeScratch& s,
                     ThreadPool& pool, float* out) {
  const int64_t hidden = c.hidden_size, inter = c.moe_intermediate_size, slots = n_tokens * c.num_experts_per_tok;
  const int64_t shared_inter = w.has_shared_experts ? w.shared_experts.gate_proj.rows : 0;
  auto grow = [](std::vector<float>& buffer, int64_t n) {
    if (buffer.size() < size_t(n)) buffer.resize(size_t(n));
  };
  grow(s.expert_in, slots * hidden);
  grow(s.expert_out, slots * hidden);
  grow(s.slot_gate, slots * inter);
  grow(s.slot_up, slots * inter);
  grow(s.mlp.gate, n_tokens * shared_inter);
  grow(s.mlp.up, n_tokens * shared_inter);
  for (int64_t slot = 0; slot < slots; ++slot)
    std::memcpy(s.expert_in.data() + slot * hidden, x + s.token_of_slot[size_t(slot)] * hidden,
                size_t(hidden) * sizeof(float));

  auto& jobs = s.jobs;
  jobs.clear();
  if (w.has_shared_experts) {
    jobs.push_back({x, n_tokens, &w.shared_experts.gate_proj, s.mlp.gate.data()});
    jobs.push_back({x, n_tokens, &w.shared_experts.up_proj, s.mlp.up.data()});
  }
  for (int64_t e = 0; e < c.n_routed_experts; ++e) {
    const int32_t begin = s.expert_begin[size_t(e)], end = s.expert_begin[size_t(e + 1)];
    if (begin == end) continue;
    const MlpWeights& expert = w.experts[size_t(e)];
    const float* in = s.expert_in.data() + begin * hidden;
    jobs.push_back({in, end - begin, &expert.gate_proj, s.slot_gate.data() + begin * inter});
    jobs.push_back({in, end - begin, &expert.up_proj, s.slot_up.data() + begin * inter});
  }
  matmul_batch(pool, jobs);

  parallel_silu_mul(pool, s.slot_gate.data(), s.slot_up.data(), slots * inter);
  if (w.has_shared_experts) parallel_silu_mul(pool, s.mlp.gate.data(), s.mlp.up.data(), n_tokens * shared_inter);
  jobs.clear();
  if (w.has_shared_experts) jobs.push_back({s.mlp.gate.data(), n_tokens, &w.shared_experts.down_proj, out});
  else std::memset(out, 0, size_t(n_tokens * hidden) * sizeof(float));
  for (int64_t e = 0; e < c.n_routed_experts; ++e) {
    const int32_t begin = s.expert_begin[size_t(e)], end = s.expert_begin[size_t(e + 1)];
    if (begin == end) continue;
    jobs.push_back({s.slot_gate.data() + begin * inter, end - begin, &w.experts[size_t(e)].down_proj,
                    s.expert_out.data() + begin * hidden});
  }
  matmul_batch(pool, jobs);

  for (int64_t slot = 0; slot < slots; ++slot)  // slots are in expert index order
    axpy(hidden, s.weight_of_slot[size_t(slot)], s.expert_out.data() + slot * hidden,
         out + s.token_of_slot[size_t(slot)] * hidden);
}

}  // namespace

void moe_forward(const Config& c, const MoeWeights& w, const float* x, int64_t n_tokens, MoeScratch& s,
                 ThreadPool& pool, float* out) {
  const int64_t n_experts = c.n_routed_experts, k = c.num_experts_per_tok, hidden = c.hidden_size;
  auto grow = [](auto& buffer, int64_t n) {
    if (buffer.size() < size_t(n)) buffer.resize(size_t(n));
  };
  grow(s.gate_logits, n_tokens * n_experts);
  grow(s.chosen, n_tokens * k);
  grow(s.chosen_weight, n_tokens * k);
  matmul(pool, x, n_tokens, w.gate, s.gate_logits.data());
  for (int64_t t = 0; t < n_tokens; ++t)
    route_token(c, s.gate_logits.data() + t * n_experts, w.e_score_correction_bias, s.chosen.data() + t * k,
                s.chosen_weight.data() + t * k);

  // Counting sort of (token, weight) slots by expert.
  s.expert_begin.assign(size_t(n_experts + 1), 0);
  for (int64_t i = 0; i < n_tokens * k; ++i) ++s.expert_begin[size_t(s.chosen[size_t(i)] + 1)];
  std::partial_sum(s.expert_begin.begin(), s.expert_begin.end(), s.expert_begin.begin());
  grow(s.token_of_slot, n_tokens * k);
  grow(s.weight_of_slot, n_tokens * k);
  std::vector<int32_t> fill(s.expert_begin.begin(), s.expert_begin.end() - 1);
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (int64_t i = 0; i < k; ++i) {
      const int32_t slot = fill[size_t(s.chosen[size_t(t * k + i)])]++;
      s.token_of_slot[size_t(slot)] = int32_t(t);
      s.weight_of_slot[size_t(slot)] = s.chosen_weight[size_t(t * k + i)];
    }
  }

  if (n_tokens * k <= kMaxBatchedSlots) return experts_batched(c, w, x, n_tokens, s, pool, out);

  // Shared experts first, then each routed expert adds its weighted share; the order of the sum
  // per token is fixed (expert index order), whatever the thread count.
  if (w.has_shared_experts) {
    mlp_forward(w.shared_experts, x, hidden, n_tokens, s.mlp, pool, out);
  } else {
    std::memset(out, 0, size_t(n_tokens * hidden) * sizeof(float));
  }
  grow(s.expert_in, n_tokens * hidden);
  grow(s.expert_out, n_tokens * hidden);
  for (int64_t e = 0; e < n_experts; ++e) {
    const int32_t begin = s.expert_begin[size_t(e)], end = s.expert_begin[size_t(e + 1)];
    if (begin == end) continue;
    for (int32_t slot = begin; slot < end; ++slot)
      std::memcpy(s.expert_in.data() + (slot - begin) * hidden, x + s.token_of_slot[size_t(slot)] * hidden,
                  size_t(hidden) * sizeof(float));
    mlp_forward(w.experts[size_t(e)], s.expert_in.data(), hidden, end - begin, s.mlp, pool, s.expert_out.data());
    for (int32_t slot = begin; slot < end; ++slot)
      axpy(hidden, s.weight_of_slot[size_t(slot)], s.expert_out.data() + (slot - begin) * hidden,
           out + s.token_of_slot[size_t(slot)] * hidden);
  }
}

}  // namespace deepmoe
