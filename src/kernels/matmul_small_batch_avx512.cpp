// AVX-512 version of the streaming decode kernel (see matmul_small_batch.cpp). Explicit
// intrinsics because the compiler's vectorization of the bf16 widening left half the memory
// bandwidth unused: here each row keeps four independent FMA chains per activation row, widens
// bf16 with one shift, and handles the tail with masked loads instead of a scalar loop.
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12 reports _mm512_undefined_epi32() inside its own intrinsics as maybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstdint>

#include "kernels/avx512_common.h"
#include "kernels/matmul_small_batch_avx512.h"

namespace deepmoe {

namespace {

DEEPMOE_AVX512 inline __m512 load16(const float* w, __mmask16 mask) { return _mm512_maskz_loadu_ps(mask, w); }
DEEPMOE_AVX512 inline __m512 load16(const uint16_t* w, __mmask16 mask) {
  return widen_bf16(_mm256_maskz_loadu_epi16(mask, w));
}
DEEPMOE_AVX512 inline __m512 load16(const float* w) { return _mm512_loadu_ps(w); }
DEEPMOE_AVX512 inline __m512 load16(const uint16_t* w) {
  return widen_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w)));
}

template <int M, typename WeightT>
DEEPMOE_AVX512 void dot_rows(const float* x, int64_t x_stride, const WeightT* w, int64_t cols, float* y,
                             int64_t y_stride, int64_t row_begin, int64_t row_end) {
  const int64_t body = cols / 64 * 64;
  for (int64_t row = row_begin; row < row_end; ++row) {
    const WeightT* w_row = w + row * cols;
    __m512 acc[M][4];
    for (int m = 0; m < M; ++m)
      for (int j = 0; j < 4; ++j) acc[m][j] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k < body; k += 64) {
      const __m512 w0 = load16(w_row + k), w1 = load16(w_row + k + 16), w2 = load16(w_row + k + 32),
                   w3 = load16(w_row + k + 48);
      for (int m = 0; m < M; ++m) {
        const float* xm = x + m * x_stride + k;
        acc[m][0] = _mm512_fmadd_ps(_mm512_loadu_ps(xm), w0, acc[m][0]);
        acc[m][1] = _mm512_fmadd_ps(_mm512_loadu_ps(xm + 16), w1, acc[m][1]);
        acc[m][2] = _mm512_fmadd_ps(_mm512_loadu_ps(xm + 32), w2, acc[m][2]);
        acc[m][3] = _mm512_fmadd_ps(_mm512_loadu_ps(xm + 48), w3, acc[m][3]);
      }
    }
    for (; k < cols; k += 16) {  // tail: up to three full vectors and one partial, masked
      const int64_t left = cols - k;
      const __mmask16 mask = left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
      const __m512 wv = load16(w_row + k, mask);
      for (int m = 0; m < M; ++m)
        acc[m][0] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, x + m * x_stride + k), wv, acc[m][0]);
    }
    for (int m = 0; m < M; ++m) {
      const __m512 sum = _mm512_add_ps(_mm512_add_ps(acc[m][0], acc[m][1]), _mm512_add_ps(acc[m][2], acc[m][3]));
      y[m * y_stride + row] = sum_lanes_in_order(sum);
    }
  }
}

template <typename WeightT>
DEEPMOE_AVX512 void dot_rows_any_m(const float* x, int64_t x_stride, int64_t n_rows, const WeightT* w, int64_t cols,
                                   float* y, int64_t y_stride, int64_t row_begin, int64_t row_end) {
  switch (n_rows) {
    case 1: return dot_rows<1>(x, x_stride, w, cols, y, y_stride, row_begin, row_end);
    case 2: return dot_rows<2>(x, x_stride, w, cols, y, y_stride, row_begin, row_end);
    case 3: return dot_rows<3>(x, x_stride, w, cols, y, y_stride, row_begin, row_end);
    default: return dot_rows<4>(x, x_stride, w, cols, y, y_stride, row_begin, row_end);
  }
}

}  // namespace

bool cpu_has_avx512() {
  static const bool has =
      __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  return has;
}

void dot_rows_avx512(const float* x, int64_t x_stride, int64_t n_rows, const float* w, int64_t cols, float* y,
                     int64_t y_stride, int64_t row_begin, int64_t row_end) {
  dot_rows_any_m(x, x_stride, n_rows, w, cols, y, y_stride, row_begin, row_end);
}

void dot_rows_avx512(const float* x, int64_t x_stride, int64_t n_rows, const uint16_t* w, int64_t cols, float* y,
                     int64_t y_stride, int64_t row_begin, int64_t row_end) {
  dot_rows_any_m(x, x_stride, n_rows, w, cols, y, y_stride, row_begin, row_end);
}

}  // namespace deepmoe
