#include "model/moe.h"

#include <cstring>
#include <numeric>

#include "kernels/linear_backward.h"
#include "kernels/ops.h"
#include "model/gradients.h"
#include "model/moe_parallel.h"

namespace deepmoe {

namespace {

// The batched path holds every (token, expert) slot's input and output at once; past this many
// slots (V3, hidden 7168: about 0.3 GB of buffers) inference's per-expert path's smaller ones win.
constexpr int64_t kMaxBatchedSlots = 4096;

template <typename T>
T* grown(std::vector<T>& buffer, int64_t n) {
  if (buffer.size() < size_t(n)) buffer.resize(size_t(n));
  return buffer.data();
}

int64_t shared_intermediate(const MoeWeights& w) { return w.has_shared_experts ? w.shared_experts.gate_proj.rows : 0; }

// Each expert sees a few tokens (decode: one or two; a 128-token prompt with 16 experts top-2:
// about 16), so its three products are small and the pool's wake-ups would dominate. All gate
// and up projections (shared experts included) run as one batch, then all down projections:
// two wake-ups per layer instead of three per expert. The same products and the same order of
// the weighted sum as the per-expert path, so the results are identical.
void experts_batched(const Context& ctx, const Config& c, const MoeWeights& w, const float* x, int64_t n_tokens,
                     MoeScratch& s, MoeSaved* saved, float* out) {
  const MoeRouting& r = saved ? saved->routing : s.routing;
  const int64_t hidden = c.hidden_size, inter = c.moe_intermediate_size, slots = n_tokens * c.num_experts_per_tok;
  const int64_t shared_inter = shared_intermediate(w);
  float* expert_in = saved ? saved->expert_in.data() : grown(s.expert_in, slots * hidden);
  float* expert_out = saved ? saved->expert_out.data() : grown(s.expert_out, slots * hidden);
  float* slot_gate = saved ? saved->experts.gate.data() : grown(s.slot_gate, slots * inter);
  float* slot_up = saved ? saved->experts.up.data() : grown(s.slot_up, slots * inter);
  float* slot_act = saved ? saved->experts.act.data() : slot_gate;
  float* shared_gate = saved ? saved->shared.gate.data() : grown(s.mlp.gate, n_tokens * shared_inter);
  float* shared_up = saved ? saved->shared.up.data() : grown(s.mlp.up, n_tokens * shared_inter);
  float* shared_act = saved ? saved->shared.act.data() : shared_gate;
  for (int64_t slot = 0; slot < slots; ++slot)
    std::memcpy(expert_in + slot * hidden, x + r.token_of_slot[size_t(slot)] * hidden, size_t(hidden) * sizeof(float));

  auto& jobs = s.jobs;
  jobs.clear();
  if (w.has_shared_experts) {
    jobs.push_back({x, n_tokens, &w.shared_experts.gate_proj, shared_gate});
    jobs.push_back({x, n_tokens, &w.shared_experts.up_proj, shared_up});
  }
  for (int64_t e = 0; e < c.n_routed_experts; ++e) {
    const int32_t begin = r.expert_begin[size_t(e)], end = r.expert_begin[size_t(e + 1)];
    if (begin == end) continue;
    const MlpWeights& expert = w.experts[size_t(e)];
    const float* in = expert_in + begin * hidden;
    jobs.push_back({in, end - begin, &expert.gate_proj, slot_gate + begin * inter});
    jobs.push_back({in, end - begin, &expert.up_proj, slot_up + begin * inter});
  }
  matmul_batch(ctx, jobs);

  parallel_silu_mul(ctx.pool(), slot_gate, slot_up, slots * inter, slot_act);
  if (w.has_shared_experts) parallel_silu_mul(ctx.pool(), shared_gate, shared_up, n_tokens * shared_inter, shared_act);
  jobs.clear();
  if (w.has_shared_experts) jobs.push_back({shared_act, n_tokens, &w.shared_experts.down_proj, out});
  else std::memset(out, 0, size_t(n_tokens * hidden) * sizeof(float));
  for (int64_t e = 0; e < c.n_routed_experts; ++e) {
    const int32_t begin = r.expert_begin[size_t(e)], end = r.expert_begin[size_t(e + 1)];
    if (begin == end) continue;
    jobs.push_back(
        {slot_act + begin * inter, end - begin, &w.experts[size_t(e)].down_proj, expert_out + begin * hidden});
  }
  matmul_batch(ctx, jobs);

  for (int64_t slot = 0; slot < slots; ++slot)  // slots are in expert index order
    axpy(hidden, r.chosen_weight[size_t(r.choice_of_slot[size_t(slot)])], expert_out + slot * hidden,
         out + r.token_of_slot[size_t(slot)] * hidden);
}

// Inference past kMaxBatchedSlots: shared experts first, then each routed expert adds its
// weighted share; the order of the sum per token is fixed (expert index order).
void experts_one_by_one(const Context& ctx, const Config& c, const MoeWeights& w, const float* x, int64_t n_tokens,
                        MoeScratch& s, float* out) {
  const MoeRouting& r = s.routing;
  const int64_t hidden = c.hidden_size;
  if (w.has_shared_experts) mlp_forward(ctx, w.shared_experts, x, hidden, n_tokens, s.mlp, nullptr, out);
  else std::memset(out, 0, size_t(n_tokens * hidden) * sizeof(float));
  float* expert_in = grown(s.expert_in, n_tokens * hidden);
  float* expert_out = grown(s.expert_out, n_tokens * hidden);
  for (int64_t e = 0; e < c.n_routed_experts; ++e) {
    const int32_t begin = r.expert_begin[size_t(e)], end = r.expert_begin[size_t(e + 1)];
    if (begin == end) continue;
    for (int32_t slot = begin; slot < end; ++slot)
      std::memcpy(expert_in + (slot - begin) * hidden, x + r.token_of_slot[size_t(slot)] * hidden,
                  size_t(hidden) * sizeof(float));
    mlp_forward(ctx, w.experts[size_t(e)], expert_in, hidden, end - begin, s.mlp, nullptr, expert_out);
    for (int32_t slot = begin; slot < end; ++slot)
      axpy(hidden, r.chosen_weight[size_t(r.choice_of_slot[size_t(slot)])], expert_out + (slot - begin) * hidden,
           out + r.token_of_slot[size_t(slot)] * hidden);
  }
}

}  // namespace

MoeSaved MoeSaved::take(const Config& c, const MoeWeights& w, ActivationSlab& slab, int64_t n_tokens) {
  const int64_t slots = n_tokens * c.num_experts_per_tok;
  MoeSaved saved;
  saved.scores = slab.take(size_t(n_tokens * c.n_routed_experts));
  saved.expert_in = slab.take(size_t(slots * c.hidden_size));
  saved.expert_out = slab.take(size_t(slots * c.hidden_size));
  saved.experts = MlpSaved::take(slab, slots, c.moe_intermediate_size);
  saved.shared = MlpSaved::take(slab, n_tokens, shared_intermediate(w));
  return saved;
}

void moe_forward(const Context& ctx, const Config& c, const MoeWeights& w, const float* x, int64_t n_tokens,
                 MoeScratch& s, MoeSaved* saved, float* out) {
  const int64_t n_experts = c.n_routed_experts, k = c.num_experts_per_tok;
  MoeRouting& r = saved ? saved->routing : s.routing;
  float* logits = grown(s.gate_logits, n_tokens * n_experts);
  r.chosen.resize(size_t(n_tokens * k));
  r.chosen_weight.resize(size_t(n_tokens * k));
  matmul(ctx, x, n_tokens, w.gate, logits);
  for (int64_t t = 0; t < n_tokens; ++t)
    route_token(c, logits + t * n_experts, w.e_score_correction_bias, r.chosen.data() + t * k,
                r.chosen_weight.data() + t * k, s.router, saved ? saved->scores.data() + t * n_experts : nullptr);

  // Counting sort of the slots by expert (stable: tokens in order within an expert).
  r.expert_begin.assign(size_t(n_experts + 1), 0);
  for (int64_t i = 0; i < n_tokens * k; ++i) ++r.expert_begin[size_t(r.chosen[size_t(i)] + 1)];
  std::partial_sum(r.expert_begin.begin(), r.expert_begin.end(), r.expert_begin.begin());
  r.token_of_slot.resize(size_t(n_tokens * k));
  r.choice_of_slot.resize(size_t(n_tokens * k));
  std::vector<int32_t>& fill = s.router.order;
  fill.assign(r.expert_begin.begin(), r.expert_begin.end() - 1);
  for (int64_t choice = 0; choice < n_tokens * k; ++choice) {
    const int32_t slot = fill[size_t(r.chosen[size_t(choice)])]++;
    r.token_of_slot[size_t(slot)] = int32_t(choice / k);
    r.choice_of_slot[size_t(slot)] = int32_t(choice);
  }

  if (saved && saved->parallel.group) return moe_parallel_forward(ctx, c, w, x, n_tokens, *saved, out);
  // Training always batches: its saved activations are the batched path's buffers.
  if (saved || n_tokens * k <= kMaxBatchedSlots) return experts_batched(ctx, c, w, x, n_tokens, s, saved, out);
  experts_one_by_one(ctx, c, w, x, n_tokens, s, out);
}

void slot_output_backward(const MoeSaved& saved, const float* dy, int64_t hidden, int64_t slot, float* d_out,
                          std::vector<float>& d_weights) {
  const MoeRouting& r = saved.routing;
  const int64_t choice = r.choice_of_slot[size_t(slot)];
  const float weight = r.chosen_weight[size_t(choice)];
  const float* g = dy + r.token_of_slot[size_t(slot)] * hidden;
  const float* y = saved.expert_out.data() + slot * hidden;
  double dot = 0;
  for (int64_t h = 0; h < hidden; ++h) {
    d_out[h] = weight * g[h];
    dot += double(g[h]) * y[h];
  }
  d_weights[size_t(choice)] = float(dot);
}

void moe_backward(const Context& ctx, const Config& c, const MoeWeights& w, const MoeWeights& grads, const float* x,
                  int64_t batch, int64_t seq, double aux_weight, const MoeSaved& saved, const float* dy, float* dx) {
  const int64_t n = batch * seq, n_experts = c.n_routed_experts, k = c.num_experts_per_tok, hidden = c.hidden_size;
  const int64_t inter = c.moe_intermediate_size;
  const MoeRouting& r = saved.routing;
  if (w.has_shared_experts)
    mlp_backward(ctx, w.shared_experts, grads.shared_experts, x, hidden, n, saved.shared, dy, dx);

  // Routed experts: d(expert output) = weight·dy, and d(weight) = dy · expert output. Experts run
  // in parallel, one per thread; their input gradients are added afterwards in slot (expert) order,
  // so the sums do not depend on the schedule.
  std::vector<float> d_weights(size_t(n * k), 0.0f), d_inputs(size_t(n * k * hidden), 0.0f);
  if (saved.parallel.group) {
    moe_parallel_backward(ctx, c, w, grads, saved, dy, d_weights, d_inputs);
  } else {
    ctx.pool().parallel_for(n_experts, 1, [&](int64_t e_begin, int64_t e_end) {
      const Context serial = ctx.on_this_thread();
      std::vector<float> d_out;
      for (int64_t e = e_begin; e < e_end; ++e) {
        const int32_t begin = r.expert_begin[size_t(e)], end = r.expert_begin[size_t(e + 1)];
        const int64_t m = end - begin;
        if (m == 0) continue;
        d_out.resize(size_t(m * hidden));
        for (int64_t i = 0; i < m; ++i)
          slot_output_backward(saved, dy, hidden, begin + i, d_out.data() + i * hidden, d_weights);
        mlp_backward(serial, w.experts[size_t(e)], grads.experts[size_t(e)], saved.expert_in.data() + begin * hidden,
                     hidden, m, saved.experts.rows(begin, m, inter), d_out.data(), d_inputs.data() + begin * hidden);
      }
    });
  }
  for (int64_t slot = 0; slot < n * k; ++slot)
    axpy(hidden, 1.0f, d_inputs.data() + slot * hidden, dx + r.token_of_slot[size_t(slot)] * hidden);

  std::vector<float> d_logits(size_t(n * n_experts));
  router_backward(c, saved.scores.data(), r.chosen.data(), d_weights.data(), batch, seq, aux_weight, d_logits.data());
  linear_backward(ctx, x, hidden, d_logits.data(), n, w.gate, dx, grad_data(grads.gate));
}

}  // namespace deepmoe
