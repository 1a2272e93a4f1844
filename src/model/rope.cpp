#include "model/rope.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace deepmoe {

namespace {

double yarn_get_mscale(double scale, double mscale) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

// The pair index at which a frequency completes `rotations` turns over the original context.
double yarn_correction_dim(double rotations, double dim, double base, double max_positions) {
  return dim * std::log(max_positions / (rotations * 2.0 * std::numbers::pi)) / (2.0 * std::log(base));
}

}  // namespace

std::vector<double> rope_inverse_frequencies(const Config& config) {
  const int64_t dim = config.qk_rope_head_dim;
  const double base = config.rope_theta;
  std::vector<double> inverse(size_t(dim / 2));
  for (int64_t i = 0; i < dim / 2; ++i) inverse[size_t(i)] = 1.0 / std::pow(base, double(2 * i) / double(dim));
  if (!config.rope_scaling) return inverse;

  const RopeScaling& yarn = *config.rope_scaling;
  const double max_positions = double(yarn.original_max_position_embeddings);
  double low = std::floor(yarn_correction_dim(yarn.beta_fast, double(dim), base, max_positions));
  double high = std::ceil(yarn_correction_dim(yarn.beta_slow, double(dim), base, max_positions));
  low = std::max(low, 0.0);
  high = std::min(high, double(dim - 1));
  if (low == high) high += 0.001;  // avoid a zero-width ramp
  for (int64_t i = 0; i < dim / 2; ++i) {
    const double ramp = std::clamp((double(i) - low) / (high - low), 0.0, 1.0);
    const double extrapolation_weight = 1.0 - ramp;  // high-frequency pairs keep their frequency
    const double extrapolated = inverse[size_t(i)];
    const double interpolated = extrapolated / yarn.factor;
    inverse[size_t(i)] = interpolated * (1.0 - extrapolation_weight) + extrapolated * extrapolation_weight;
  }
  return inverse;
}

double rope_cos_sin_scale(const Config& config) {
  if (!config.rope_scaling) return 1.0;
  const RopeScaling& yarn = *config.rope_scaling;
  return yarn_get_mscale(yarn.factor, yarn.mscale) / yarn_get_mscale(yarn.factor, yarn.mscale_all_dim);
}

void RopeTable::compute(const Config& config, int64_t first_position, int64_t n_positions) {
  std::vector<int64_t> positions(static_cast<size_t>(n_positions));
  for (int64_t p = 0; p < n_positions; ++p) positions[size_t(p)] = first_position + p;
  compute(config, positions);
}

void RopeTable::compute(const Config& config, std::span<const int64_t> positions) {
  const int64_t n_positions = int64_t(positions.size());
  if (inverse_frequencies_.empty()) {
    inverse_frequencies_ = rope_inverse_frequencies(config);
    scale_ = rope_cos_sin_scale(config);
  }
  half_dim = config.qk_rope_head_dim / 2;
  cos.resize(size_t(n_positions * half_dim));
  sin.resize(cos.size());
  for (int64_t p = 0; p < n_positions; ++p) {
    for (int64_t i = 0; i < half_dim; ++i) {
      // float(position) * float(inv_freq) as HF does would lose bits at long positions; double is the reference.
      const double angle = double(positions[size_t(p)]) * inverse_frequencies_[size_t(i)];
      cos[size_t(p * half_dim + i)] = float(std::cos(angle) * scale_);
      sin[size_t(p * half_dim + i)] = float(std::sin(angle) * scale_);
    }
  }
}

}  // namespace deepmoe
