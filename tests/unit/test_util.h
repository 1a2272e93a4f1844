// Helpers for unit tests: seeded random inputs and the relative error ‖a−b‖/‖b‖.
#pragma once
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "kernels/matmul.h"

namespace deepmoe::testing {

inline std::vector<float> random_vector(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> values(n);
  for (auto& value : values) value = normal(rng);
  return values;
}

template <typename A, typename B>
double relative_error(const A& actual, const B& expected) {
  double diff = 0.0, norm = 0.0;
  for (size_t i = 0; i < expected.size(); ++i) {
    diff += (double(actual[i]) - double(expected[i])) * (double(actual[i]) - double(expected[i]));
    norm += double(expected[i]) * double(expected[i]);
  }
  return std::sqrt(diff / norm);
}

// y = x·Wᵀ in double, from the f32 values a kernel sees: x [m, cols], w [rows, cols].
inline std::vector<double> matmul_reference(const std::vector<float>& x, int64_t m, const std::vector<float>& w,
                                            int64_t rows, int64_t cols) {
  std::vector<double> y(size_t(m * rows));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t r = 0; r < rows; ++r) {
      double sum = 0.0;
      for (int64_t k = 0; k < cols; ++k) sum += double(x[size_t(i * cols + k)]) * w[size_t(r * cols + k)];
      y[size_t(i * rows + r)] = sum;
    }
  return y;
}

inline WeightMatrix weight_matrix(WeightFormat format, const void* data, int64_t rows, int64_t cols) {
  WeightMatrix w;
  w.format = format;
  w.data = data;
  w.rows = rows;
  w.cols = cols;
  return w;
}

}  // namespace deepmoe::testing
