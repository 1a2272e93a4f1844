#include "model/mlp.h"

#include "kernels/matmul.h"
#include "kernels/ops.h"

namespace deepmoe {

void parallel_silu_mul(ThreadPool& pool, float* gate, const float* up, int64_t n) {
  constexpr int64_t kGrain = int64_t(1) << 16;
  if (n <= kGrain) return silu_mul(gate, up, n, gate);
  pool.parallel_for(n, kGrain, [&](int64_t begin, int64_t end) {
    silu_mul(gate + begin, up + begin, end - begin, gate + begin);
  });
}

void mlp_forward(const MlpWeights& w, const float* x, int64_t x_stride, int64_t n_tokens,
                 MlpScratch& s, ThreadPool& pool, float* out) {
  const int64_t intermediate = w.gate_proj.rows;
  const size_t needed = size_t(n_tokens * intermediate);
  if (s.gate.size() < needed) s.gate.resize(needed);
  if (s.up.size() < needed) s.up.resize(needed);
  // One batch: one wake-up of the pool, and x prepared (e.g. rounded to Q8_0) once for both.
  const MatmulJob gate_up[2] = {{x, n_tokens, &w.gate_proj, s.gate.data(), x_stride, -1},
                                {x, n_tokens, &w.up_proj, s.up.data(), x_stride, -1}};
  matmul_batch(pool, gate_up);
  parallel_silu_mul(pool, s.gate.data(), s.up.data(), n_tokens * intermediate);
  matmul(pool, s.gate.data(), n_tokens, w.down_proj, out);
}

}  // namespace deepmoe
