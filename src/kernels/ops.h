// Elementwise and row-wise kernels of the model, over plain f32 buffers. Shapes in comments.
#pragma once
#include <cstdint>

namespace deepmoe {

// out[t, :] = x[t, :] / sqrt(mean(x[t, :]²) + eps) * weight; x, out: [n_tokens, dim] with row
// strides; out may alias x. inv_rms (optional, [n_tokens]) receives 1 / sqrt(mean + eps), which
// the backward pass needs.
void rmsnorm(const float* x, int64_t x_stride, const float* weight, int64_t n_tokens, int64_t dim, float eps,
             float* out, int64_t out_stride, float* inv_rms = nullptr);
// The gradients of rmsnorm, accumulated: dx (rows x_stride apart, like x) += ∂/∂x of dy's rows
// [n_tokens, dim], dweight[dim] += ∂/∂weight; inv_rms as the forward pass saved it.
void rmsnorm_backward(const float* x, int64_t x_stride, const float* weight, const float* inv_rms, const float* dy,
                      int64_t n_tokens, int64_t dim, float* dx, float* dweight);

// out[i] = silu(gate[i]) * up[i] for i < n; out may alias gate.
void silu_mul(const float* gate, const float* up, int64_t n, float* out);
// silu_mul's gradients from d_out: d_gate[i], d_up[i] (written, not accumulated).
void silu_mul_backward(const float* gate, const float* up, const float* d_out, int64_t n, float* d_gate, float* d_up);

// In-place softmax of one row of n values (max-subtracted, f32 accumulation).
void softmax_inplace(float* row, int64_t n);

// Index of the first largest of n > 0 values: std::max_element's answer on NaN-free input (a NaN
// is never chosen; all NaN gives 0),
// found with vector maxima, then the first index that holds the maximum (greedy sampling over
// a vocabulary: a branchy scalar scan cost 2 µs per token at 4096 entries).
int64_t first_argmax(const float* values, int64_t n);

// log Σ exp(x[i]) over n > 0 values, in double after subtracting the maximum (log-softmax's
// normalizer: log p(i) = x[i] − log_sum_exp).
double log_sum_exp(const float* x, int64_t n);

// Rotates interleaved pairs (x[2i], x[2i+1]) of a rope vector of `dim` values by the angles
// whose cos/sin are given ([dim/2] each), as DeepSeek's checkpoints expect.
void rope_rotate_pairs(float* x, int64_t dim, const float* cos, const float* sin);
// Its backward: rotates a gradient's pairs back by the same angles (the transpose of the
// rotation; cos and sin carry YaRN's scale, which the chain rule keeps).
void rope_rotate_pairs_backward(float* dx, int64_t dim, const float* cos, const float* sin);

// y[i] += scale * x[i]
void axpy(int64_t n, float scale, const float* x, float* y);

}  // namespace deepmoe
