// SiLU-gated feed-forward, down_proj(silu(gate_proj(x)) * up_proj(x)): the dense layers' MLP,
// each routed expert and the shared experts. Forward and backward side by side.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "core/activation_slab.h"
#include "kernels/context.h"
#include "model/weights.h"

namespace deepmoe {

struct MlpScratch {
  std::vector<float> gate, up;
};

// What backward needs of one call: the two projections before the gate and their product.
struct MlpSaved {
  std::span<float> gate, up, act;  // [n_tokens, intermediate]
  // Carves the spans for n_tokens rows (before a parallel region: the slab is not thread-safe).
  static MlpSaved take(ActivationSlab& slab, int64_t n_tokens, int64_t intermediate);
  // Rows [first, first + count) of spans taken for `intermediate` columns.
  MlpSaved rows(int64_t first, int64_t count, int64_t intermediate) const;
};

// act = silu(gate)·up over n values, split across the pool when there is enough of it to pay
// for a wake-up (elementwise, so the results do not depend on the split); act may alias gate.
void parallel_silu_mul(ThreadPool& pool, float* gate, const float* up, int64_t n, float* act);

// x: [n_tokens, hidden] with row stride x_stride -> out: [n_tokens, hidden] (packed). Inference
// (saved null) keeps the projections in `scratch`; training passes spans from MlpSaved::take.
void mlp_forward(const Context& ctx, const MlpWeights& w, const float* x, int64_t x_stride, int64_t n_tokens,
                 MlpScratch& scratch, const MlpSaved* saved, float* out);

// dx[n_tokens, hidden] (packed) += ∂loss/∂x for dy = ∂loss/∂out; the weights' gradients
// accumulate into `grads` (gradients.h).
void mlp_backward(const Context& ctx, const MlpWeights& w, const MlpWeights& grads, const float* x, int64_t x_stride,
                  int64_t n_tokens, const MlpSaved& saved, const float* dy, float* dx);

}  // namespace deepmoe
