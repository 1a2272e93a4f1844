// SiLU-gated feed-forward: down_proj(silu(gate_proj(x)) * up_proj(x)).
#pragma once
#include <cstdint>
#include <vector>

#include "core/thread_pool.h"
#include "model/weights.h"

namespace deepmoe {

struct MlpScratch {
  std::vector<float> gate, up;
};

// gate = silu(gate)·up over n values, split across the pool when there is enough of it to pay
// for a wake-up (elementwise, so the results do not depend on the split).
void parallel_silu_mul(ThreadPool& pool, float* gate, const float* up, int64_t n);

// x: [n_tokens, hidden] with row stride x_stride -> out: [n_tokens, hidden] (packed).
void mlp_forward(const MlpWeights& w, const float* x, int64_t x_stride, int64_t n_tokens,
                 MlpScratch& scratch, ThreadPool& pool, float* out);

}  // namespace deepmoe
