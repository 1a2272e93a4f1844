// A multi-token-prediction module's own stage (DeepSeek-V3 §2.2, model/weights.h MtpWeights):
// x = eh_proj([enorm(embed(t_{i+1})) ; hnorm(h_i)]), the input of its decoder block, where h_i is
// the previous depth's hidden state at position i (the main model's after its final norm, or the
// previous module's after its shared_head.norm) and t_{i+1} the token after position i. The block
// (model/decoder.h) and the head (model/embedding.h) are the model's own layers.
#pragma once
#include <cstdint>
#include <span>

#include "kernels/context.h"
#include "model/config.h"
#include "model/weights.h"

namespace deepmoe {

// x [n, hidden] for n rows: next_tokens [n] (checked by the caller), h [n, hidden]. joined
// [n, 2·hidden] receives [enorm(embedding) ; hnorm(h)], inv_rms [2n] (optional) the two norms'
// 1/rms, which backward needs.
void mtp_input_forward(const Context& ctx, const Config& config, const MtpWeights& w, const WeightMatrix& embed_tokens,
                       std::span<const int32_t> next_tokens, const float* h, int64_t n, float* joined, float* inv_rms,
                       float* x);

// dx [n, hidden]: ∂loss/∂x. dh [n, hidden] += ∂loss/∂h; the gradients of eh_proj, enorm, hnorm
// (in `grads`) and of the embedding rows looked up (d_embed, [vocab, hidden]) accumulate.
// embed_tokens is the f32 embedding the forward read.
void mtp_input_backward(const Context& ctx, const Config& config, const MtpWeights& w, const MtpWeights& grads,
                        const WeightMatrix& embed_tokens, float* d_embed, std::span<const int32_t> next_tokens,
                        const float* h, int64_t n, const float* joined, const float* inv_rms, const float* dx,
                        float* dh);

}  // namespace deepmoe
