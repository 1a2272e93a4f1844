// One decoder layer: x += MLA(RMSNorm(x)); x += FFN(RMSNorm(x)), the FFN a dense MLP (the first
// first_k_dense_replace layers) or the MoE. Inference and training run the same forward;
// training passes `saved` and gets its backward beside it.
#pragma once
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "core/activation_slab.h"
#include "kernels/context.h"
#include "model/batch.h"
#include "model/mla.h"
#include "model/mlp.h"
#include "model/moe.h"
#include "model/rope.h"
#include "model/weights.h"

namespace deepmoe {

struct DecoderScratch {
  std::vector<float> normed, branch;  // [n_tokens, hidden]
  MlaScratch mla;
  MoeScratch moe;
};

// What backward needs of one layer's training call (spans from the step's slab).
struct DecoderSaved {
  std::span<float> x_in, inv_rms1, normed1;  // the layer's input, its norm
  std::span<float> h, inv_rms2, normed2;     // after attention's residual, its norm
  MlaSaved mla;
  MoeSaved moe;  // MoE layers
  MlpSaved mlp;  // dense layers
  static DecoderSaved take(const Config& config, const LayerWeights& w, ActivationSlab& slab, int64_t batch,
                           int64_t seq);
};

// x: [n_tokens, hidden], the tokens of `batch`, updated in place. Inference passes the cache and
// no saved; training (every sequence saved->mla.seq tokens from position 0) passes saved and no
// cache. The MoE routing of the call is left in scratch.moe.routing (or saved->moe.routing).
void decoder_forward(const Context& ctx, const Config& config, const LayerWeights& w, int64_t layer,
                     std::span<const BatchSequence> batch, const RopeTable& rope, LatentRows* cache,
                     std::optional<AttentionMode> attention_mode, DecoderScratch& scratch, DecoderSaved* saved,
                     float* x);

// dx: ∂loss/∂(layer output) on entry, ∂loss/∂(layer input) on return, [batch · seq, hidden];
// the weights' gradients accumulate into `grads`. aux_weight scales the MoE balance loss.
void decoder_backward(const Context& ctx, const Config& config, const LayerWeights& w, const LayerWeights& grads,
                      int64_t batch, const RopeTable& rope, double aux_weight, const DecoderSaved& saved, float* dx);

// RMSNorm of n_tokens rows on the pool (rows are independent, so the split changes nothing).
void rmsnorm_rows(const Context& ctx, const float* x, int64_t x_stride, const float* weight, int64_t n_tokens,
                  int64_t dim, float eps, float* out, int64_t out_stride, float* inv_rms);

}  // namespace deepmoe
