#include "model/mtp.h"

#include <algorithm>
#include <vector>

#include "kernels/linear_backward.h"
#include "kernels/ops.h"
#include "model/decoder.h"
#include "model/embedding.h"
#include "model/gradients.h"

namespace deepmoe {

void mtp_input_forward(const Context& ctx, const Config& config, const MtpWeights& w, const WeightMatrix& embed_tokens,
                       std::span<const int32_t> next_tokens, const float* h, int64_t n, float* joined, float* inv_rms,
                       float* x) {
  const int64_t hidden = config.hidden_size;
  const float eps = float(config.rms_norm_eps);
  std::vector<float> embedded(size_t(n * hidden));
  embed_forward(embed_tokens, next_tokens, embedded.data());
  // The embedding's half first, as DeepSeek's released eh_proj is laid out (vLLM, SGLang and
  // Megatron agree; the paper's equation writes the other order).
  rmsnorm_rows(ctx, embedded.data(), hidden, w.enorm, n, hidden, eps, joined, 2 * hidden, inv_rms);
  rmsnorm_rows(ctx, h, hidden, w.hnorm, n, hidden, eps, joined + hidden, 2 * hidden, inv_rms ? inv_rms + n : nullptr);
  matmul(ctx, joined, n, w.eh_proj, x);
}

void mtp_input_backward(const Context& ctx, const Config& config, const MtpWeights& w, const MtpWeights& grads,
                        const WeightMatrix& embed_tokens, float* d_embed, std::span<const int32_t> next_tokens,
                        const float* h, int64_t n, const float* joined, const float* inv_rms, const float* dx,
                        float* dh) {
  const int64_t hidden = config.hidden_size;
  std::vector<float> d_joined(size_t(n * 2 * hidden), 0.0f);
  linear_backward(ctx, joined, 2 * hidden, dx, n, w.eh_proj, d_joined.data(), grad_data(grads.eh_proj));
  // rmsnorm_backward reads packed rows of dy: each half apart.
  std::vector<float> d_half(size_t(n * hidden)), embedded(size_t(n * hidden)), d_embedded(size_t(n * hidden), 0.0f);
  for (int64_t r = 0; r < n; ++r) std::copy_n(d_joined.data() + r * 2 * hidden, hidden, d_half.data() + r * hidden);
  embed_forward(embed_tokens, next_tokens, embedded.data());
  rmsnorm_backward(embedded.data(), hidden, w.enorm, inv_rms, d_half.data(), n, hidden, d_embedded.data(),
                   grad_data(grads.enorm));
  embed_backward(next_tokens, d_embedded.data(), hidden, d_embed);
  for (int64_t r = 0; r < n; ++r)
    std::copy_n(d_joined.data() + r * 2 * hidden + hidden, hidden, d_half.data() + r * hidden);
  rmsnorm_backward(h, hidden, w.hnorm, inv_rms + n, d_half.data(), n, hidden, dh, grad_data(grads.hnorm));
}

}  // namespace deepmoe
