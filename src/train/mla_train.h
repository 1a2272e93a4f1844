// Multi-head Latent Attention for training: the expanded (paper) form over whole sequences with
// a causal mask, keeping what backward needs. Same math as model/mla.cpp's expanded path.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/rope.h"
#include "train/activation_slab.h"
#include "train/parameters.h"

namespace deepmoe::train {

// Spans into the step's ActivationSlab.
struct MlaSaved {
  std::span<float> q_a, q_a_inv_rms, q_latent;  // q_lora only: [N, q_lora_rank]
  std::span<float> q;                           // [N, heads, qk_head_dim], rope part rotated
  std::span<float> kv_a, c_inv_rms, c_normed;   // [N, kv_lora_rank + rope], [N], [N, kv_lora_rank]
  std::span<float> kv;                          // [N, heads, nope + v]
  std::span<float> k_rope;                      // [N, rope], rotated
  std::span<float> probs;                       // [B, heads, T, T] (zero above the diagonal)
  std::span<float> attn;                        // [N, heads * v]
};

// x: [batch * seq, hidden] (already normed) -> out [batch * seq, hidden]. Positions restart at
// 0 for every sequence; rope holds cos/sin for positions 0 .. seq-1.
void mla_train_forward(const Config& c, Parameters& p, const std::string& prefix, const float* x, int64_t batch,
                       int64_t seq, const RopeTable& rope, ActivationSlab& slab, MlaSaved& saved, float* out);
// dx += d(out)/dx · d_out; parameter gradients accumulate into p.grads().
void mla_train_backward(const Config& c, Parameters& p, const std::string& prefix, const float* x, int64_t batch,
                        int64_t seq, const RopeTable& rope, const MlaSaved& saved, const float* d_out, float* dx);

}  // namespace deepmoe::train
