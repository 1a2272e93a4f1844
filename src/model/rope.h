// Rotary position embedding with DeepSeek's YaRN: per-pair inverse frequencies blended between
// interpolated and extrapolated by a linear ramp over the rotation count, and cos/sin scaled by
// mscale(factor, mscale) / mscale(factor, mscale_all_dim) (HF DeepseekV3YarnRotaryEmbedding).
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "model/config.h"

namespace deepmoe {

// [qk_rope_head_dim / 2] inverse frequencies, in double.
std::vector<double> rope_inverse_frequencies(const Config& config);
// The factor cos and sin are multiplied by (1 without YaRN).
double rope_cos_sin_scale(const Config& config);

struct RopeTable {
  int64_t half_dim = 0;
  std::vector<float> cos;  // [n_positions, half_dim]
  std::vector<float> sin;
  // Fills cos/sin for positions first_position ... first_position + n_positions - 1.
  void compute(const Config& config, int64_t first_position, int64_t n_positions);
  // Fills cos/sin for each of `positions`, in order.
  void compute(const Config& config, std::span<const int64_t> positions);
  const float* cos_at(int64_t i) const { return cos.data() + i * half_dim; }
  const float* sin_at(int64_t i) const { return sin.data() + i * half_dim; }

 private:
  std::vector<double> inverse_frequencies_;
  double scale_ = 1.0;
};

}  // namespace deepmoe
