#include "model/embedding.h"

#include <algorithm>
#include <vector>

#include "kernels/linear_backward.h"
#include "kernels/ops.h"
#include "model/decoder.h"

namespace deepmoe {

void embed_forward(const WeightMatrix& embed_tokens, std::span<const int32_t> tokens, float* out) {
  for (size_t t = 0; t < tokens.size(); ++t)
    dequantize_rows(embed_tokens, tokens[t], 1, out + int64_t(t) * embed_tokens.cols);
}

void embed_backward(std::span<const int32_t> tokens, const float* dx, int64_t hidden, float* grad) {
  for (size_t t = 0; t < tokens.size(); ++t) axpy(hidden, 1.0f, dx + int64_t(t) * hidden, grad + tokens[t] * hidden);
}

void head_forward(const Context& ctx, const WeightMatrix& lm_head, const float* norm, float eps, const float* x,
                  int64_t n, float* normed, float* inv_rms, float* logits) {
  const int64_t hidden = lm_head.cols;
  rmsnorm_rows(ctx, x, hidden, norm, n, hidden, eps, normed, hidden, inv_rms);
  matmul(ctx, normed, n, lm_head, logits);
}

void head_backward(const Context& ctx, const WeightMatrix& lm_head, const float* norm, const float* x, int64_t n,
                   const float* inv_rms, const float* normed, const float* d_logits, float* d_lm_head, float* d_norm,
                   float* dx, const float* d_normed_extra) {
  const int64_t hidden = lm_head.cols;
  std::vector<float> d_normed(size_t(n * hidden), 0.0f);
  if (d_normed_extra) std::copy_n(d_normed_extra, d_normed.size(), d_normed.begin());
  linear_backward(ctx, normed, hidden, d_logits, n, lm_head, d_normed.data(), d_lm_head);
  rmsnorm_backward(x, hidden, norm, inv_rms, d_normed.data(), n, hidden, dx, d_norm);
}

}  // namespace deepmoe
