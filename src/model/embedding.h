// The ends of the model: the token embedding (a row lookup) and the head (final RMSNorm, then
// lm_head, tied to the embedding or not). Forward and backward side by side.
#pragma once
#include <cstdint>
#include <span>

#include "kernels/context.h"
#include "kernels/matmul.h"

namespace deepmoe {

// out[t, :] = embedding row tokens[t] (dequantized); the caller has checked the ids.
void embed_forward(const WeightMatrix& embed_tokens, std::span<const int32_t> tokens, float* out);
// grad rows tokens[t] += dx[t, :].
void embed_backward(std::span<const int32_t> tokens, const float* dx, int64_t hidden, float* grad);

// logits[n, vocab] = lm_head(RMSNorm(x)) for x [n, hidden]; normed [n, hidden] receives the
// normed rows, inv_rms [n] (optional) what backward needs.
void head_forward(const Context& ctx, const WeightMatrix& lm_head, const float* norm, float eps, const float* x,
                  int64_t n, float* normed, float* inv_rms, float* logits);
// dx [n, hidden] += ∂loss/∂x from d_logits (and d_normed_extra, ∂loss/∂normed through another
// path: an MTP module's output feeds the next module); the lm_head's and the norm's gradients accumulate.
void head_backward(const Context& ctx, const WeightMatrix& lm_head, const float* norm, const float* x, int64_t n,
                   const float* inv_rms, const float* normed, const float* d_logits, float* d_lm_head, float* d_norm,
                   float* dx, const float* d_normed_extra = nullptr);

}  // namespace deepmoe
