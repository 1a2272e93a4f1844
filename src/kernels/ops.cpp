#include "kernels/ops.h"

#include <algorithm>
#include <bit>
#include <cmath>

namespace deepmoe {

namespace {

// exp(x) in straight-line f32 arithmetic that the compiler vectorizes (std::exp is a scalar
// call): 2^n·p(r) with n = round(x·log2 e), r = x − n·ln 2 (ln 2 split in two for exactness)
// and Cephes' degree-6 polynomial for p; within 2 ulp of std::exp on [-87.3, 88], 0 below
// (so exp(-inf) = 0), and exp(88) above.
inline float exp_vectorizable(float x) {
  const float clamped = std::min(std::max(x, -87.3f), 88.0f);
  const float n = (clamped * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  float r = clamped - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const float scale = std::bit_cast<float>((int32_t(n) + 127) << 23);
  return x < -87.3f ? 0.0f : p * scale;
}

// The largest of n values (NaNs ignored; -inf when there are none), in 16 independent lanes so
// the loop vectorizes in each caller's clone; a maximum is exact in any order.
inline float max_in_lanes(const float* x, int64_t n) {
  constexpr int64_t kLanes = 16;
  const int64_t body = n / kLanes * kLanes;
  float lane_max[kLanes];
  for (int64_t j = 0; j < kLanes; ++j) lane_max[j] = -INFINITY;
  for (int64_t i = 0; i < body; i += kLanes)
    for (int64_t j = 0; j < kLanes; ++j) lane_max[j] = std::max(lane_max[j], x[i + j]);
  float max_value = -INFINITY;
  for (int64_t j = 0; j < kLanes; ++j) max_value = std::max(max_value, lane_max[j]);
  for (int64_t i = body; i < n; ++i) max_value = std::max(max_value, x[i]);
  return max_value;
}

}  // namespace

// The sum of squares in eight double lanes (a vector's worth), added in order at the end: the
// loop vectorizes without reassociating anything (one double chain cost ~4 cycles per element,
// 5 % of a batched decode step on a 256-wide model).
__attribute__((target_clones("avx512f", "avx2", "default"))) void rmsnorm(const float* x, int64_t x_stride,
                                                                          const float* weight, int64_t n_tokens,
                                                                          int64_t dim, float eps, float* out,
                                                                          int64_t out_stride, float* inv_rms) {
  constexpr int64_t kLanes = 8;
  const int64_t body = dim / kLanes * kLanes;
  for (int64_t t = 0; t < n_tokens; ++t) {
    const float* row = x + t * x_stride;
    double lanes[kLanes] = {};  // double: the mean of squares of large rows loses bits in f32
    for (int64_t i = 0; i < body; i += kLanes)
      for (int64_t j = 0; j < kLanes; ++j) lanes[j] += double(row[i + j]) * row[i + j];
    double sum_squares = 0.0;
    for (int64_t i = body; i < dim; ++i) sum_squares += double(row[i]) * row[i];
    for (double lane : lanes) sum_squares += lane;
    const float inverse = float(1.0 / std::sqrt(sum_squares / double(dim) + double(eps)));
    if (inv_rms) inv_rms[t] = inverse;
    float* dst = out + t * out_stride;
    for (int64_t i = 0; i < dim; ++i) dst[i] = row[i] * inverse * weight[i];
  }
}

void rmsnorm_backward(const float* x, int64_t x_stride, const float* weight, const float* inv_rms, const float* dy,
                      int64_t n_tokens, int64_t dim, float* dx, float* dweight) {
  for (int64_t t = 0; t < n_tokens; ++t) {
    const float* row = x + t * x_stride;
    const float* g = dy + t * dim;
    const float inv = inv_rms[t];
    // y_i = x_i·inv·w_i with inv = (mean(x²)+eps)^-1/2:  dx_j = inv·g_j·w_j − x_j·inv³·mean_i(g_i·w_i·x_i)
    double dot = 0;
    for (int64_t i = 0; i < dim; ++i) {
      dot += double(g[i]) * weight[i] * row[i];
      dweight[i] += g[i] * row[i] * inv;
    }
    const float coefficient = float(dot / double(dim)) * inv * inv * inv;
    float* out = dx + t * x_stride;
    for (int64_t i = 0; i < dim; ++i) out[i] += inv * g[i] * weight[i] - row[i] * coefficient;
  }
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void silu_mul(const float* gate, const float* up,
                                                                           int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + exp_vectorizable(-g)) * up[i];
  }
}

void silu_mul_backward(const float* gate, const float* up, const float* d_out, int64_t n, float* d_gate, float* d_up) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i], s = 1.0f / (1.0f + std::exp(-g));
    d_up[i] = d_out[i] * g * s;
    d_gate[i] = d_out[i] * up[i] * s * (1.0f + g * (1.0f - s));
  }
}

// Maxima and sums in 16 independent lanes (a vector's worth), so the loops vectorize without
// reassociating anything; the lanes' sum is added in double.
__attribute__((target_clones("avx512f", "avx2", "default"))) void softmax_inplace(float* row, int64_t n) {
  constexpr int64_t kLanes = 16;
  const int64_t body = n / kLanes * kLanes;
  const float max_value = max_in_lanes(row, n);
  float lane_sum[kLanes] = {};
  for (int64_t i = 0; i < body; i += kLanes)
    for (int64_t j = 0; j < kLanes; ++j) {
      row[i + j] = exp_vectorizable(row[i + j] - max_value);
      lane_sum[j] += row[i + j];
    }
  double sum = 0.0;
  for (int64_t j = 0; j < kLanes; ++j) sum += lane_sum[j];
  for (int64_t i = body; i < n; ++i) {
    row[i] = exp_vectorizable(row[i] - max_value);
    sum += row[i];
  }
  const float inverse = float(1.0 / sum);
  for (int64_t i = 0; i < n; ++i) row[i] *= inverse;
}

__attribute__((target_clones("avx512f", "avx2", "default"))) int64_t first_argmax(const float* values, int64_t n) {
  const float max_value = max_in_lanes(values, n);
  for (int64_t i = 0; i < n; ++i)
    if (values[i] == max_value) return i;
  return 0;  // every value NaN
}

double log_sum_exp(const float* x, int64_t n) {
  const double max_value = x[first_argmax(x, n)];
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(double(x[i]) - max_value);
  return std::log(sum) + max_value;
}

void rope_rotate_pairs(float* x, int64_t dim, const float* cos, const float* sin) {
  for (int64_t i = 0; i < dim / 2; ++i) {
    const float a = x[2 * i], b = x[2 * i + 1];
    x[2 * i] = a * cos[i] - b * sin[i];
    x[2 * i + 1] = a * sin[i] + b * cos[i];
  }
}

void rope_rotate_pairs_backward(float* dx, int64_t dim, const float* cos, const float* sin) {
  for (int64_t i = 0; i < dim / 2; ++i) {
    const float even = dx[2 * i], odd = dx[2 * i + 1];
    // forward: e' = e·c − o·s, o' = e·s + o·c; its transpose:
    dx[2 * i] = even * cos[i] + odd * sin[i];
    dx[2 * i + 1] = -even * sin[i] + odd * cos[i];
  }
}

void axpy(int64_t n, float scale, const float* x, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] += scale * x[i];
}

}  // namespace deepmoe
