// The decode kernel: for M <= 4 activation rows, each weight row is read once and dotted with
// every activation row. It is memory-bound, so the goal is to stream W at full bandwidth.
// GCC vectorizes the 64-wide accumulator loops; target_clones builds AVX-512, AVX2 and generic
// versions and the loader picks one for the running CPU; where AVX-512 BW/VL exist, the
// explicit kernel of matmul_small_batch_avx512.cpp runs instead.
#include <cstring>

#include "core/error.h"
#include "kernels/matmul.h"
#include "kernels/matmul_small_batch_avx512.h"

namespace deepmoe {

namespace {

// 64 lanes = four 16-wide vectors per activation row: four independent FMA chains hide the FMA
// latency, which a single chain would make the bottleneck (~8 bytes of weights per cycle).
constexpr int kLanes = 64;

inline float load_weight(const float* w, int64_t i) { return w[i]; }
inline float load_weight(const uint16_t* w, int64_t i) {
  uint32_t bits = uint32_t(w[i]) << 16;
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

template <int M, typename WeightT>
inline void dot_rows(const float* x, int64_t x_stride, const WeightT* w, int64_t cols, float* y, int64_t y_stride,
                     int64_t row_begin, int64_t row_end) {
  const int64_t body = cols / kLanes * kLanes;
  for (int64_t row = row_begin; row < row_end; ++row) {
    const WeightT* w_row = w + row * cols;
    float acc[M][kLanes] = {};
    for (int64_t k = 0; k < body; k += kLanes) {
      float w_block[kLanes];
      for (int j = 0; j < kLanes; ++j) w_block[j] = load_weight(w_row, k + j);
      for (int m = 0; m < M; ++m)
        for (int j = 0; j < kLanes; ++j) acc[m][j] += x[m * x_stride + k + j] * w_block[j];
    }
    for (int m = 0; m < M; ++m) {
      float sum = 0.0f;
      for (int j = 0; j < kLanes; ++j) sum += acc[m][j];
      for (int64_t k = body; k < cols; ++k) sum += x[m * x_stride + k] * load_weight(w_row, k);
      y[m * y_stride + row] = sum;
    }
  }
}

template <typename WeightT>
inline void dot_rows_any_m(const float* x, int64_t x_stride, int64_t n_rows, const WeightT* w, int64_t cols, float* y,
                           int64_t y_stride, int64_t row_begin, int64_t row_end) {
  switch (n_rows) {
    case 1: return dot_rows<1>(x, x_stride, w, cols, y, y_stride, row_begin, row_end);
    case 2: return dot_rows<2>(x, x_stride, w, cols, y, y_stride, row_begin, row_end);
    case 3: return dot_rows<3>(x, x_stride, w, cols, y, y_stride, row_begin, row_end);
    default: return dot_rows<4>(x, x_stride, w, cols, y, y_stride, row_begin, row_end);
  }
}

// One multiversioned entry per weight type (clang does not multiversion templates).
__attribute__((target_clones("avx512f", "avx2", "default"))) void dot_rows_f32(const float* x, int64_t x_stride,
                                                                               int64_t n_rows, const float* w,
                                                                               int64_t cols, float* y, int64_t y_stride,
                                                                               int64_t row_begin, int64_t row_end) {
  dot_rows_any_m(x, x_stride, n_rows, w, cols, y, y_stride, row_begin, row_end);
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void dot_rows_bf16(const float* x, int64_t x_stride,
                                                                                int64_t n_rows, const uint16_t* w,
                                                                                int64_t cols, float* y,
                                                                                int64_t y_stride, int64_t row_begin,
                                                                                int64_t row_end) {
  dot_rows_any_m(x, x_stride, n_rows, w, cols, y, y_stride, row_begin, row_end);
}

}  // namespace

void matmul_small_batch(const float* x, int64_t x_stride, int64_t n_rows, const WeightMatrix& w, float* y,
                        int64_t y_stride, int64_t row_begin, int64_t row_end) {
  if (n_rows < 1 || n_rows > kSmallBatchMax) fail("matmul_small_batch: {} rows", n_rows);
  const bool avx512 = cpu_has_avx512();
  switch (w.format) {
    case WeightFormat::F32:
      if (avx512)
        return dot_rows_avx512(x, x_stride, n_rows, static_cast<const float*>(w.data), w.cols, y, y_stride, row_begin,
                               row_end);
      return dot_rows_f32(x, x_stride, n_rows, static_cast<const float*>(w.data), w.cols, y, y_stride, row_begin,
                          row_end);
    case WeightFormat::BF16:
      if (avx512)
        return dot_rows_avx512(x, x_stride, n_rows, static_cast<const uint16_t*>(w.data), w.cols, y, y_stride,
                               row_begin, row_end);
      return dot_rows_bf16(x, x_stride, n_rows, static_cast<const uint16_t*>(w.data), w.cols, y, y_stride, row_begin,
                           row_end);
    default: fail("matmul_small_batch: {} weights are not supported", weight_format_name(w.format));
  }
}

}  // namespace deepmoe
