#include "train/mla_train.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/matmul.h"
#include "kernels/ops.h"
#include "train/layers.h"

namespace deepmoe::train {

namespace {

struct Dims {
  int64_t hidden, heads, nope, rope, v, qk, kv_rank, q_rank;
};

Dims dims_of(const Config& c) {
  return {c.hidden_size, c.num_attention_heads, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim,
          c.qk_nope_head_dim + c.qk_rope_head_dim, c.kv_lora_rank, c.q_lora_rank ? *c.q_lora_rank : 0};
}

}  // namespace

void mla_train_forward(const Config& c, Parameters& p, const std::string& prefix, const float* x, int64_t batch,
                       int64_t seq, const RopeTable& rope, ActivationSlab& slab, MlaSaved& s, float* out) {
  const Dims d = dims_of(c);
  const int64_t n = batch * seq;
  const float eps = float(c.rms_norm_eps);

  // Queries: [N, heads * (nope + rope)].
  s.q = slab.take(size_t(n * d.heads * d.qk));
  if (c.q_lora_rank) {
    s.q_a = slab.take(size_t(n * d.q_rank));
    s.q_a_inv_rms = slab.take(size_t(n));
    s.q_latent = slab.take(size_t(n * d.q_rank));
    linear_forward(x, n, p.value(prefix + "q_a_proj.weight"), d.q_rank, d.hidden, s.q_a.data());
    rmsnorm_forward(s.q_a.data(), d.q_rank, p.value(prefix + "q_a_layernorm.weight"), n, d.q_rank, eps,
                    s.q_latent.data(), s.q_a_inv_rms.data());
    linear_forward(s.q_latent.data(), n, p.value(prefix + "q_b_proj.weight"), d.heads * d.qk, d.q_rank, s.q.data());
  } else {
    linear_forward(x, n, p.value(prefix + "q_proj.weight"), d.heads * d.qk, d.hidden, s.q.data());
  }
  // Keys and values through the latent.
  const int64_t kv_a_width = d.kv_rank + d.rope;
  s.kv_a = slab.take(size_t(n * kv_a_width));
  s.c_inv_rms = slab.take(size_t(n));
  s.c_normed = slab.take(size_t(n * d.kv_rank));
  s.kv = slab.take(size_t(n * d.heads * (d.nope + d.v)));
  s.k_rope = slab.take(size_t(n * d.rope));
  linear_forward(x, n, p.value(prefix + "kv_a_proj_with_mqa.weight"), kv_a_width, d.hidden, s.kv_a.data());
  rmsnorm_forward(s.kv_a.data(), kv_a_width, p.value(prefix + "kv_a_layernorm.weight"), n, d.kv_rank, eps,
                  s.c_normed.data(), s.c_inv_rms.data());
  linear_forward(s.c_normed.data(), n, p.value(prefix + "kv_b_proj.weight"), d.heads * (d.nope + d.v), d.kv_rank,
                 s.kv.data());
  for (int64_t r = 0; r < n; ++r) {
    const int64_t t = r % seq;
    std::copy_n(s.kv_a.data() + r * kv_a_width + d.kv_rank, d.rope, s.k_rope.data() + r * d.rope);
    rope_rotate_pairs(s.k_rope.data() + r * d.rope, d.rope, rope.cos_at(t), rope.sin_at(t));
    for (int64_t h = 0; h < d.heads; ++h)
      rope_rotate_pairs(s.q.data() + (r * d.heads + h) * d.qk + d.nope, d.rope, rope.cos_at(t), rope.sin_at(t));
  }

  // Causal attention per sequence and head.
  const float scale = float(c.softmax_scale());
  s.probs = slab.take(size_t(batch * d.heads * seq * seq));  // every row written below
  s.attn = slab.take(size_t(n * d.heads * d.v));                // every head's columns written below
  const int64_t q_stride = d.heads * d.qk, kv_stride = d.heads * (d.nope + d.v);
  // Sequences are independent: one per pool block.
  training_pool().parallel_for(batch, 1, [&](int64_t b_begin, int64_t b_end) {
  for (int64_t b = b_begin; b < b_end; ++b) {
    const int64_t row0 = b * seq;
    for (int64_t h = 0; h < d.heads; ++h) {
      float* probs = s.probs.data() + (b * d.heads + h) * seq * seq;
      const float* q = s.q.data() + row0 * q_stride + h * d.qk;
      const float* k = s.kv.data() + row0 * kv_stride + h * (d.nope + d.v);
      gemm_f32_ex(false, true, seq, seq, d.nope, scale, q, q_stride, k, kv_stride, 0.0f, probs, seq);
      gemm_f32_ex(false, true, seq, seq, d.rope, scale, q + d.nope, q_stride, s.k_rope.data() + row0 * d.rope, d.rope,
                  1.0f, probs, seq);
      for (int64_t t = 0; t < seq; ++t) {
        float* row = probs + t * seq;
        softmax_inplace(row, t + 1);
        std::fill(row + t + 1, row + seq, 0.0f);
      }
      gemm_f32_ex(false, false, seq, d.v, seq, 1.0f, probs, seq, k + d.nope, kv_stride, 0.0f,
                  s.attn.data() + row0 * d.heads * d.v + h * d.v, d.heads * d.v);
    }
  }
  });
  linear_forward(s.attn.data(), n, p.value(prefix + "o_proj.weight"), d.hidden, d.heads * d.v, out);
}

void mla_train_backward(const Config& c, Parameters& p, const std::string& prefix, const float* x, int64_t batch,
                        int64_t seq, const RopeTable& rope, const MlaSaved& s, const float* d_out, float* dx) {
  const Dims d = dims_of(c);
  const int64_t n = batch * seq;
  const int64_t q_stride = d.heads * d.qk, kv_stride = d.heads * (d.nope + d.v), kv_a_width = d.kv_rank + d.rope;
  const float scale = float(c.softmax_scale());

  std::vector<float> d_attn(size_t(n * d.heads * d.v), 0.0f);
  linear_backward(s.attn.data(), d_out, n, p.value(prefix + "o_proj.weight"), d.hidden, d.heads * d.v, d_attn.data(),
                  p.grad(prefix + "o_proj.weight"));

  std::vector<float> dq(s.q.size(), 0.0f), dkv(s.kv.size(), 0.0f), dk_rope(s.k_rope.size(), 0.0f);
  // Per sequence: its rows of dq, dkv and dk_rope are its own, so sequences run in parallel.
  training_pool().parallel_for(batch, 1, [&](int64_t b_begin, int64_t b_end) {
  std::vector<float> dp(static_cast<size_t>(seq * seq));
  for (int64_t b = b_begin; b < b_end; ++b) {
    const int64_t row0 = b * seq;
    for (int64_t h = 0; h < d.heads; ++h) {
      const float* probs = s.probs.data() + (b * d.heads + h) * seq * seq;
      const float* q = s.q.data() + row0 * q_stride + h * d.qk;
      const float* k = s.kv.data() + row0 * kv_stride + h * (d.nope + d.v);
      const float* da = d_attn.data() + row0 * d.heads * d.v + h * d.v;
      float* dq_h = dq.data() + row0 * q_stride + h * d.qk;
      float* dk_h = dkv.data() + row0 * kv_stride + h * (d.nope + d.v);
      // out = P·V:  dP = dOut·Vᵀ,  dV += Pᵀ·dOut
      gemm_f32_ex(false, true, seq, seq, d.v, 1.0f, da, d.heads * d.v, k + d.nope, kv_stride, 0.0f, dp.data(), seq);
      gemm_f32_ex(true, false, seq, d.v, seq, 1.0f, probs, seq, da, d.heads * d.v, 1.0f, dk_h + d.nope, kv_stride);
      // softmax: dS = P ⊙ (dP − Σ P·dP), then the scale of the scores.
      for (int64_t t = 0; t < seq; ++t) {
        const float* pr = probs + t * seq;
        float* g = dp.data() + t * seq;
        double dot = 0;
        for (int64_t u = 0; u <= t; ++u) dot += double(pr[u]) * g[u];
        for (int64_t u = 0; u < seq; ++u) g[u] = u <= t ? pr[u] * (g[u] - float(dot)) * scale : 0.0f;
      }
      // scores = q_nope·k_noperᵀ + q_rope·k_ropeᵀ
      gemm_f32_ex(false, false, seq, d.nope, seq, 1.0f, dp.data(), seq, k, kv_stride, 1.0f, dq_h, q_stride);
      gemm_f32_ex(true, false, seq, d.nope, seq, 1.0f, dp.data(), seq, q, q_stride, 1.0f, dk_h, kv_stride);
      gemm_f32_ex(false, false, seq, d.rope, seq, 1.0f, dp.data(), seq, s.k_rope.data() + row0 * d.rope, d.rope, 1.0f,
                  dq_h + d.nope, q_stride);
      gemm_f32_ex(true, false, seq, d.rope, seq, 1.0f, dp.data(), seq, q + d.nope, q_stride, 1.0f,
                  dk_rope.data() + row0 * d.rope, d.rope);
    }
  }
  });
  // Undo the rotations on the gradients of the rope parts.
  std::vector<float> dkv_a(size_t(n * kv_a_width), 0.0f);
  for (int64_t r = 0; r < n; ++r) {
    const int64_t t = r % seq;
    for (int64_t h = 0; h < d.heads; ++h)
      rope_backward_pairs(dq.data() + (r * d.heads + h) * d.qk + d.nope, d.rope, rope.cos_at(t), rope.sin_at(t));
    rope_backward_pairs(dk_rope.data() + r * d.rope, d.rope, rope.cos_at(t), rope.sin_at(t));
    std::copy_n(dk_rope.data() + r * d.rope, d.rope, dkv_a.data() + r * kv_a_width + d.kv_rank);
  }
  // kv = kv_b(norm(c)),  kv_a = x·W_kv_aᵀ
  std::vector<float> dc_normed(size_t(n * d.kv_rank), 0.0f);
  linear_backward(s.c_normed.data(), dkv.data(), n, p.value(prefix + "kv_b_proj.weight"), d.heads * (d.nope + d.v),
                  d.kv_rank, dc_normed.data(), p.grad(prefix + "kv_b_proj.weight"));
  rmsnorm_backward(s.kv_a.data(), kv_a_width, p.value(prefix + "kv_a_layernorm.weight"), s.c_inv_rms.data(),
                   dc_normed.data(), n, d.kv_rank, dkv_a.data(), p.grad(prefix + "kv_a_layernorm.weight"));
  linear_backward(x, dkv_a.data(), n, p.value(prefix + "kv_a_proj_with_mqa.weight"), kv_a_width, d.hidden, dx,
                  p.grad(prefix + "kv_a_proj_with_mqa.weight"));
  if (c.q_lora_rank) {
    std::vector<float> dq_latent(size_t(n * d.q_rank), 0.0f), dq_a(size_t(n * d.q_rank), 0.0f);
    linear_backward(s.q_latent.data(), dq.data(), n, p.value(prefix + "q_b_proj.weight"), d.heads * d.qk, d.q_rank,
                    dq_latent.data(), p.grad(prefix + "q_b_proj.weight"));
    rmsnorm_backward(s.q_a.data(), d.q_rank, p.value(prefix + "q_a_layernorm.weight"), s.q_a_inv_rms.data(),
                     dq_latent.data(), n, d.q_rank, dq_a.data(), p.grad(prefix + "q_a_layernorm.weight"));
    linear_backward(x, dq_a.data(), n, p.value(prefix + "q_a_proj.weight"), d.q_rank, d.hidden, dx,
                    p.grad(prefix + "q_a_proj.weight"));
  } else {
    linear_backward(x, dq.data(), n, p.value(prefix + "q_proj.weight"), d.heads * d.qk, d.hidden, dx,
                    p.grad(prefix + "q_proj.weight"));
  }
}

}  // namespace deepmoe::train
