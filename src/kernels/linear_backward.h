// The backward pass of y = x · Wᵀ (matmul): the input's and the weight's gradients, on the
// context's pool, in its precision (F32: OpenBLAS sgemm; BF16: bf16 operands with f32
// accumulation, as the forward pass multiplied). Weights are F32, or BF16 in BF16 precision.
#pragma once
#include <cstdint>

#include "kernels/matmul.h"

namespace deepmoe {

// dx[n, in] += dy[n, out] · W (skipped when dx is null); dw[out, in] += dyᵀ · x. x rows are
// x_stride apart (-1: packed); dx rows are packed.
void linear_backward(const Context& ctx, const float* x, int64_t x_stride, const float* dy, int64_t n,
                     const WeightMatrix& w, float* dx, float* dw);

}  // namespace deepmoe
