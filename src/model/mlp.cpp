#include "model/mlp.h"

#include "kernels/linear_backward.h"
#include "kernels/matmul.h"
#include "kernels/ops.h"
#include "model/gradients.h"

namespace deepmoe {

MlpSaved MlpSaved::take(ActivationSlab& slab, int64_t n_tokens, int64_t intermediate) {
  const size_t cells = size_t(n_tokens * intermediate);
  return {slab.take(cells), slab.take(cells), slab.take(cells)};
}

MlpSaved MlpSaved::rows(int64_t first, int64_t count, int64_t intermediate) const {
  const size_t offset = size_t(first * intermediate), cells = size_t(count * intermediate);
  return {gate.subspan(offset, cells), up.subspan(offset, cells), act.subspan(offset, cells)};
}

void parallel_silu_mul(ThreadPool& pool, float* gate, const float* up, int64_t n, float* act) {
  constexpr int64_t kGrain = int64_t(1) << 16;
  if (n <= kGrain) return silu_mul(gate, up, n, act);
  pool.parallel_for(n, kGrain,
                    [&](int64_t begin, int64_t end) { silu_mul(gate + begin, up + begin, end - begin, act + begin); });
}

void mlp_forward(const Context& ctx, const MlpWeights& w, const float* x, int64_t x_stride, int64_t n_tokens,
                 MlpScratch& scratch, const MlpSaved* saved, float* out) {
  const int64_t intermediate = w.gate_proj.rows;
  float *gate, *up, *act;
  if (saved) {
    gate = saved->gate.data();
    up = saved->up.data();
    act = saved->act.data();
  } else {
    const size_t needed = size_t(n_tokens * intermediate);
    if (scratch.gate.size() < needed) scratch.gate.resize(needed);
    if (scratch.up.size() < needed) scratch.up.resize(needed);
    gate = act = scratch.gate.data();  // inference needs no pre-activation: the product overwrites it
    up = scratch.up.data();
  }
  // One batch: one wake-up of the pool, and x prepared (e.g. rounded to Q8_0) once for both.
  const MatmulJob gate_up[2] = {{x, n_tokens, &w.gate_proj, gate, x_stride, -1},
                                {x, n_tokens, &w.up_proj, up, x_stride, -1}};
  matmul_batch(ctx, gate_up);
  parallel_silu_mul(ctx.pool(), gate, up, n_tokens * intermediate, act);
  matmul(ctx, act, n_tokens, w.down_proj, out);
}

void mlp_backward(const Context& ctx, const MlpWeights& w, const MlpWeights& grads, const float* x, int64_t x_stride,
                  int64_t n_tokens, const MlpSaved& saved, const float* dy, float* dx) {
  const size_t cells = saved.act.size();
  std::vector<float> d_act(cells, 0.0f), d_gate(cells), d_up(cells);
  linear_backward(ctx, saved.act.data(), -1, dy, n_tokens, w.down_proj, d_act.data(), grad_data(grads.down_proj));
  silu_mul_backward(saved.gate.data(), saved.up.data(), d_act.data(), int64_t(cells), d_gate.data(), d_up.data());
  linear_backward(ctx, x, x_stride, d_gate.data(), n_tokens, w.gate_proj, dx, grad_data(grads.gate_proj));
  linear_backward(ctx, x, x_stride, d_up.data(), n_tokens, w.up_proj, dx, grad_data(grads.up_proj));
}

}  // namespace deepmoe
