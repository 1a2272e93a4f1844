#include "model/decoder.h"

#include <algorithm>

#include "kernels/ops.h"
#include "model/gradients.h"

namespace deepmoe {

void rmsnorm_rows(const Context& ctx, const float* x, int64_t x_stride, const float* weight, int64_t n_tokens,
                  int64_t dim, float eps, float* out, int64_t out_stride, float* inv_rms) {
  constexpr int64_t kRowsPerBlock = 16;
  if (n_tokens <= kRowsPerBlock) return rmsnorm(x, x_stride, weight, n_tokens, dim, eps, out, out_stride, inv_rms);
  ctx.pool().parallel_for(n_tokens, kRowsPerBlock, [&](int64_t begin, int64_t end) {
    rmsnorm(x + begin * x_stride, x_stride, weight, end - begin, dim, eps, out + begin * out_stride, out_stride,
            inv_rms ? inv_rms + begin : nullptr);
  });
}

DecoderSaved DecoderSaved::take(const Config& c, const LayerWeights& w, ActivationSlab& slab, int64_t batch,
                                int64_t seq) {
  const int64_t n = batch * seq, hidden = c.hidden_size;
  DecoderSaved s;
  s.x_in = slab.take(size_t(n * hidden));
  s.inv_rms1 = slab.take(size_t(n));
  s.normed1 = slab.take(size_t(n * hidden));
  s.mla = MlaSaved::take(c, slab, batch, seq);
  s.h = slab.take(size_t(n * hidden));
  s.inv_rms2 = slab.take(size_t(n));
  s.normed2 = slab.take(size_t(n * hidden));
  if (w.is_moe) s.moe = MoeSaved::take(c, w.moe, slab, n);
  else s.mlp = MlpSaved::take(slab, n, w.mlp.gate_proj.rows);
  return s;
}

void decoder_forward(const Context& ctx, const Config& c, const LayerWeights& w, int64_t layer,
                     std::span<const BatchSequence> batch, const RopeTable& rope, LatentRows* cache,
                     std::optional<AttentionMode> attention_mode, DecoderScratch& s, DecoderSaved* saved, float* x) {
  int64_t n_tokens = 0;
  for (const BatchSequence& sequence : batch) n_tokens += int64_t(sequence.tokens.size());
  const int64_t hidden = c.hidden_size, cells = n_tokens * hidden;
  const float eps = float(c.rms_norm_eps);
  if (s.branch.size() < size_t(cells)) s.branch.resize(size_t(cells));
  if (!saved && s.normed.size() < size_t(cells)) s.normed.resize(size_t(cells));
  float* branch = s.branch.data();

  if (saved) std::copy_n(x, cells, saved->x_in.data());
  float* normed = saved ? saved->normed1.data() : s.normed.data();
  rmsnorm_rows(ctx, x, hidden, w.input_layernorm, n_tokens, hidden, eps, normed, hidden,
               saved ? saved->inv_rms1.data() : nullptr);
  mla_forward(ctx, c, w.self_attn, normed, batch, rope, cache, layer, attention_mode, s.mla,
              saved ? &saved->mla : nullptr, branch);
  axpy(cells, 1.0f, branch, x);

  if (saved) std::copy_n(x, cells, saved->h.data());
  normed = saved ? saved->normed2.data() : s.normed.data();
  rmsnorm_rows(ctx, x, hidden, w.post_attention_layernorm, n_tokens, hidden, eps, normed, hidden,
               saved ? saved->inv_rms2.data() : nullptr);
  if (w.is_moe) moe_forward(ctx, c, w.moe, normed, n_tokens, s.moe, saved ? &saved->moe : nullptr, branch);
  else mlp_forward(ctx, w.mlp, normed, hidden, n_tokens, s.moe.mlp, saved ? &saved->mlp : nullptr, branch);
  axpy(cells, 1.0f, branch, x);
}

void decoder_backward(const Context& ctx, const Config& c, const LayerWeights& w, const LayerWeights& g, int64_t batch,
                      const RopeTable& rope, double aux_weight, const DecoderSaved& s, float* dx) {
  const int64_t seq = s.mla.seq, n = batch * seq, hidden = c.hidden_size;
  // x_out = h + ffn(norm2(h)):  dh = dx + the ffn path's part
  std::vector<float> d_normed(size_t(n * hidden), 0.0f);
  if (w.is_moe)
    moe_backward(ctx, c, w.moe, g.moe, s.normed2.data(), batch, seq, aux_weight, s.moe, dx, d_normed.data());
  else mlp_backward(ctx, w.mlp, g.mlp, s.normed2.data(), hidden, n, s.mlp, dx, d_normed.data());
  rmsnorm_backward(s.h.data(), hidden, w.post_attention_layernorm, s.inv_rms2.data(), d_normed.data(), n, hidden, dx,
                   grad_data(g.post_attention_layernorm));
  // h = x_in + mla(norm1(x_in))
  std::fill(d_normed.begin(), d_normed.end(), 0.0f);
  mla_backward(ctx, c, w.self_attn, g.self_attn, s.normed1.data(), batch, rope, s.mla, dx, d_normed.data());
  rmsnorm_backward(s.x_in.data(), hidden, w.input_layernorm, s.inv_rms1.data(), d_normed.data(), n, hidden, dx,
                   grad_data(g.input_layernorm));
}

}  // namespace deepmoe
