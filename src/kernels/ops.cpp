#include "kernels/ops.h"

#include <algorithm>
#include <cmath>

namespace deepmoe {

void rmsnorm(const float* x, int64_t x_stride, const float* weight, int64_t n_tokens, int64_t dim,
             float eps, float* out, int64_t out_stride) {
  for (int64_t t = 0; t < n_tokens; ++t) {
    const float* row = x + t * x_stride;
    double sum_squares = 0.0;  // double: the mean of squares of large rows loses bits in f32
    for (int64_t i = 0; i < dim; ++i) sum_squares += double(row[i]) * row[i];
    const float inverse = float(1.0 / std::sqrt(sum_squares / double(dim) + double(eps)));
    float* dst = out + t * out_stride;
    for (int64_t i = 0; i < dim; ++i) dst[i] = row[i] * inverse * weight[i];
  }
}

void silu_mul(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void softmax_inplace(float* row, int64_t n) {
  float max_value = -INFINITY;
  for (int64_t i = 0; i < n; ++i) max_value = std::max(max_value, row[i]);
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    row[i] = std::exp(row[i] - max_value);
    sum += row[i];
  }
  const float inverse = float(1.0 / sum);
  for (int64_t i = 0; i < n; ++i) row[i] *= inverse;
}

void rope_rotate_pairs(float* x, int64_t dim, const float* cos, const float* sin) {
  for (int64_t i = 0; i < dim / 2; ++i) {
    const float a = x[2 * i], b = x[2 * i + 1];
    x[2 * i] = a * cos[i] - b * sin[i];
    x[2 * i + 1] = a * sin[i] + b * cos[i];
  }
}

void axpy(int64_t n, float scale, const float* x, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] += scale * x[i];
}

}  // namespace deepmoe
