#include "model/moe_parallel.h"

#include <cstring>

#include "kernels/ops.h"
#include "model/mlp.h"

namespace deepmoe {

namespace {

// Row i of `to` = row index[i] of `from` (gather), or row index[i] of `to` = row i of `from`
// (scatter): between the received order (by source rank) and the expert-major order.
void gather_rows(const float* from, const std::vector<int32_t>& index, int64_t width, float* to) {
  for (size_t i = 0; i < index.size(); ++i)
    std::memcpy(to + int64_t(i) * width, from + int64_t(index[i]) * width, size_t(width) * sizeof(float));
}
void scatter_rows(const float* from, const std::vector<int32_t>& index, int64_t width, float* to) {
  for (size_t i = 0; i < index.size(); ++i)
    std::memcpy(to + int64_t(index[i]) * width, from + int64_t(i) * width, size_t(width) * sizeof(float));
}

// The saved projections of the received rows, as mlp_backward reads them (it only reads).
MlpSaved projections(const ExpertParallelSaved& ep) {
  auto span = [](const std::vector<float>& v) { return std::span<float>(const_cast<float*>(v.data()), v.size()); };
  return {span(ep.gate), span(ep.up), span(ep.act)};
}

// Sizes the exchange from the routing: how many rows go to and come from each rank, and where
// each received row sits in expert-major order.
void plan_exchange(const Config& c, const MoeRouting& r, ExpertParallelSaved& ep) {
  ExpertGroup& group = *ep.group;
  const int ranks = group.size();
  const int64_t per_rank = c.n_routed_experts / ranks;
  std::vector<int32_t> send_counts(size_t(c.n_routed_experts));
  for (size_t e = 0; e < send_counts.size(); ++e) send_counts[e] = r.expert_begin[e + 1] - r.expert_begin[e];
  ep.recv_counts.assign(size_t(ranks * per_rank), 0);
  group.exchange_counts(send_counts, ep.recv_counts, per_rank);
  ep.send_rows.assign(size_t(ranks), 0);
  ep.recv_rows.assign(size_t(ranks), 0);
  std::vector<int64_t> rank_start(size_t(ranks) + 1, 0);  // in received rows
  for (int q = 0; q < ranks; ++q) {
    ep.send_rows[size_t(q)] = r.expert_begin[size_t((q + 1) * per_rank)] - r.expert_begin[size_t(q * per_rank)];
    for (int64_t j = 0; j < per_rank; ++j) ep.recv_rows[size_t(q)] += ep.recv_counts[size_t(q * per_rank + j)];
    rank_start[size_t(q) + 1] = rank_start[size_t(q)] + ep.recv_rows[size_t(q)];
  }
  ep.expert_begin.assign(size_t(per_rank) + 1, 0);
  ep.received_row.clear();
  std::vector<int64_t> next(rank_start.begin(), rank_start.end() - 1);  // each rank's next unplaced row
  for (int64_t j = 0; j < per_rank; ++j) {
    for (int q = 0; q < ranks; ++q)
      for (int32_t i = 0; i < ep.recv_counts[size_t(q * per_rank + j)]; ++i)
        ep.received_row.push_back(int32_t(next[size_t(q)]++));
    ep.expert_begin[size_t(j) + 1] = int32_t(ep.received_row.size());
  }
}

}  // namespace

void moe_parallel_forward(const Context& ctx, const Config& c, const MoeWeights& w, const float* x, int64_t n_tokens,
                          MoeSaved& saved, float* out) {
  ExpertParallelSaved& ep = saved.parallel;
  const MoeRouting& r = saved.routing;
  const int64_t hidden = c.hidden_size, inter = c.moe_intermediate_size;
  const int64_t per_rank = c.n_routed_experts / ep.group->size(), first = ep.group->rank() * per_rank;
  if (w.has_shared_experts) {
    MlpScratch unused;
    mlp_forward(ctx, w.shared_experts, x, hidden, n_tokens, unused, &saved.shared, out);
  } else {
    std::memset(out, 0, size_t(n_tokens * hidden) * sizeof(float));
  }

  for (size_t slot = 0; slot < r.token_of_slot.size(); ++slot)
    std::memcpy(saved.expert_in.data() + int64_t(slot) * hidden, x + int64_t(r.token_of_slot[slot]) * hidden,
                size_t(hidden) * sizeof(float));
  plan_exchange(c, r, ep);
  const int64_t rows = int64_t(ep.received_row.size());
  std::vector<float> received(size_t(rows * hidden));
  ep.group->exchange_rows(saved.expert_in.data(), ep.send_rows, received.data(), ep.recv_rows, hidden);
  ep.in.resize(size_t(rows * hidden));
  gather_rows(received.data(), ep.received_row, hidden, ep.in.data());

  // This rank's experts over every rank's rows: gate and up as one batch, then down.
  ep.gate.resize(size_t(rows * inter));
  ep.up.resize(size_t(rows * inter));
  ep.act.resize(size_t(rows * inter));
  std::vector<MatmulJob> jobs;
  for (int64_t j = 0; j < per_rank; ++j) {
    const int32_t begin = ep.expert_begin[size_t(j)], end = ep.expert_begin[size_t(j) + 1];
    if (begin == end) continue;
    const MlpWeights& expert = w.experts[size_t(first + j)];
    jobs.push_back({ep.in.data() + begin * hidden, end - begin, &expert.gate_proj, ep.gate.data() + begin * inter});
    jobs.push_back({ep.in.data() + begin * hidden, end - begin, &expert.up_proj, ep.up.data() + begin * inter});
  }
  matmul_batch(ctx, jobs);
  parallel_silu_mul(ctx.pool(), ep.gate.data(), ep.up.data(), rows * inter, ep.act.data());
  std::vector<float> results(size_t(rows * hidden));
  jobs.clear();
  for (int64_t j = 0; j < per_rank; ++j) {
    const int32_t begin = ep.expert_begin[size_t(j)], end = ep.expert_begin[size_t(j) + 1];
    if (begin == end) continue;
    jobs.push_back({ep.act.data() + begin * inter, end - begin, &w.experts[size_t(first + j)].down_proj,
                    results.data() + begin * hidden});
  }
  matmul_batch(ctx, jobs);

  // Home again, in the order the rows left, then each token's weighted sum in slot order (the
  // single-rank path's order).
  scatter_rows(results.data(), ep.received_row, hidden, received.data());
  ep.group->exchange_rows(received.data(), ep.recv_rows, saved.expert_out.data(), ep.send_rows, hidden);
  for (size_t slot = 0; slot < r.token_of_slot.size(); ++slot)
    axpy(hidden, r.chosen_weight[size_t(r.choice_of_slot[slot])], saved.expert_out.data() + int64_t(slot) * hidden,
         out + int64_t(r.token_of_slot[slot]) * hidden);
}

void moe_parallel_backward(const Context& ctx, const Config& c, const MoeWeights& w, const MoeWeights& grads,
                           const MoeSaved& saved, const float* dy, std::vector<float>& d_weights,
                           std::vector<float>& d_inputs) {
  const ExpertParallelSaved& ep = saved.parallel;
  const MoeRouting& r = saved.routing;
  const int64_t hidden = c.hidden_size, inter = c.moe_intermediate_size;
  const int64_t per_rank = c.n_routed_experts / ep.group->size(), first = ep.group->rank() * per_rank;
  const int64_t slots = int64_t(r.token_of_slot.size()), rows = int64_t(ep.received_row.size());

  // d(expert output) = weight·dy, and d(weight) = dy · expert output, on the slots' own rank.
  std::vector<float> d_out(size_t(slots * hidden));
  ctx.pool().parallel_for(slots, 64, [&](int64_t begin, int64_t end) {
    for (int64_t slot = begin; slot < end; ++slot)
      slot_output_backward(saved, dy, hidden, slot, d_out.data() + slot * hidden, d_weights);
  });

  std::vector<float> d_received(size_t(rows * hidden)), d_rows(size_t(rows * hidden));
  ep.group->exchange_rows(d_out.data(), ep.send_rows, d_received.data(), ep.recv_rows, hidden);
  gather_rows(d_received.data(), ep.received_row, hidden, d_rows.data());

  // This rank's experts, one per thread, as the single-rank backward runs them.
  std::vector<float> d_in(size_t(rows * hidden), 0.0f);
  const MlpSaved projected = projections(ep);
  ctx.pool().parallel_for(per_rank, 1, [&](int64_t j_begin, int64_t j_end) {
    const Context serial = ctx.on_this_thread();
    for (int64_t j = j_begin; j < j_end; ++j) {
      const int32_t begin = ep.expert_begin[size_t(j)], end = ep.expert_begin[size_t(j) + 1];
      if (begin == end) continue;
      mlp_backward(serial, w.experts[size_t(first + j)], grads.experts[size_t(first + j)],
                   ep.in.data() + begin * hidden, hidden, end - begin, projected.rows(begin, end - begin, inter),
                   d_rows.data() + begin * hidden, d_in.data() + begin * hidden);
    }
  });
  scatter_rows(d_in.data(), ep.received_row, hidden, d_received.data());
  ep.group->exchange_rows(d_received.data(), ep.recv_rows, d_inputs.data(), ep.send_rows, hidden);
}

}  // namespace deepmoe
