// AVX-512 decode kernels for quantized weights (see matmul_quant.h). A 32-value chunk is widened
// into two 16-float vectors; each activation row folds a group's chunks into partial sums that
// are scaled once per group. Even and odd groups feed separate accumulators, so two FMA chains
// are in flight per activation row (one chain made the FMA latency, not memory, the bottleneck).
// W8A8 uses VNNI's vpdpbusd (uint8 × int8 → int32), 64 products per instruction.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/ggml_blocks.h"
#include "kernels/matmul_quant.h"
#include "kernels/vnni_common.h"

namespace deepmoe {

namespace {

#define DEEPMOE_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,f16c")))

constexpr int64_t kChunk = 32;

DEEPMOE_AVX512 inline float load_f16(const void* p) {
  uint16_t bits;
  std::memcpy(&bits, p, 2);
  return _cvtsh_ss(bits);
}

DEEPMOE_AVX512 inline void widen_int8(const uint8_t* q, __m512& lo, __m512& hi) {
  lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q))));
  hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 16))));
}

DEEPMOE_AVX512 inline void widen_int4(const uint8_t* q, __m512i zero, __m512& lo, __m512& hi) {
  const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q)));
  lo = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_and_si512(bytes, _mm512_set1_epi32(0x0f)), zero));
  hi = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_srli_epi32(bytes, 4), zero));
}

// Zero point 8 (Q4_0, symmetric Int4): a 16-entry table lookup maps a nibble straight to q − 8
// as a float. vpermps reads only the low 4 bits of each index, so the low nibble needs no mask
// and one shift yields the high one: three instructions instead of six.
DEEPMOE_AVX512 inline void widen_int4_centered(const uint8_t* q, __m512 table, __m512& lo, __m512& hi) {
  const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q)));
  lo = _mm512_permutexvar_ps(bytes, table);
  hi = _mm512_permutexvar_ps(_mm512_srli_epi32(bytes, 4), table);
}

// Group g of a row (one ggml block, or `group` Int4 values): where its chunks start, its scale
// and its zero point.
struct Group {
  const uint8_t* q;
  float scale;
  int zero;
};

template <WeightFormat F>
DEEPMOE_AVX512 inline Group group_at(const WeightMatrix& w, const uint8_t* row_data, const uint16_t* row_scales,
                                     const uint8_t* row_zeros, int64_t g) {
  if constexpr (F == WeightFormat::Q8_0) {
    const uint8_t* block = row_data + g * kQ8_0BlockBytes;
    return {block + 2, load_f16(block), 0};
  } else if constexpr (F == WeightFormat::Q4_0) {
    const uint8_t* block = row_data + g * kQ4_0BlockBytes;
    return {block + 2, load_f16(block), 8};
  } else {  // Int4
    return {row_data + g * (w.group / 2), _cvtsh_ss(row_scales[g]), row_zeros ? row_zeros[g] : 8};
  }
}

// Folds group g into `into` for every activation row: unscaled partial sums over its chunks
// (two chains, low and high halves), then one scaled FMA.
template <int M, WeightFormat F>
DEEPMOE_AVX512 inline void accumulate_group(const float* x, int64_t x_stride, const WeightMatrix& w,
                                            const uint8_t* row_data, const uint16_t* row_scales,
                                            const uint8_t* row_zeros, int64_t chunks_per_group, int64_t g,
                                            __m512* into) {
  const Group group = group_at<F>(w, row_data, row_scales, row_zeros, g);
  const __m512i zero = _mm512_set1_epi32(group.zero);
  const __m512 centered = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
  __m512 part_lo[M], part_hi[M];
  for (int m = 0; m < M; ++m) part_lo[m] = part_hi[m] = _mm512_setzero_ps();
  for (int64_t c = 0; c < chunks_per_group; ++c) {
    __m512 lo, hi;
    if constexpr (F == WeightFormat::Q8_0) widen_int8(group.q + c * kChunk, lo, hi);
    else if (F == WeightFormat::Q4_0 || !row_zeros) widen_int4_centered(group.q + c * 16, centered, lo, hi);
    else widen_int4(group.q + c * 16, zero, lo, hi);
    const int64_t k = (g * chunks_per_group + c) * kChunk;
    for (int m = 0; m < M; ++m) {
      part_lo[m] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(x + m * x_stride + k), part_lo[m]);
      part_hi[m] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(x + m * x_stride + k + 16), part_hi[m]);
    }
  }
  const __m512 scale = _mm512_set1_ps(group.scale);
  for (int m = 0; m < M; ++m) into[m] = _mm512_fmadd_ps(_mm512_add_ps(part_lo[m], part_hi[m]), scale, into[m]);
}

template <int M, WeightFormat F>
DEEPMOE_AVX512 void scaled_group_rows(const float* x, int64_t x_stride, const WeightMatrix& w, float* y,
                                      int64_t y_stride, int64_t row_begin, int64_t row_end) {
  const int64_t chunks_per_group = F == WeightFormat::Int4 ? w.group / kChunk : 1;
  const int64_t groups = w.cols / kChunk / chunks_per_group;
  const size_t row_bytes = w.row_bytes();
  for (int64_t row = row_begin; row < row_end; ++row) {
    const uint8_t* row_data = static_cast<const uint8_t*>(w.data) + size_t(row) * row_bytes;
    const uint16_t* row_scales = F == WeightFormat::Int4 ? w.group_scales + row * groups : nullptr;
    const uint8_t* row_zeros = F == WeightFormat::Int4 && w.zero_points ? w.zero_points + row * groups : nullptr;
    __m512 acc[2][M];
    for (int m = 0; m < M; ++m) acc[0][m] = acc[1][m] = _mm512_setzero_ps();
    int64_t g = 0;
    for (; g + 2 <= groups; g += 2) {
      accumulate_group<M, F>(x, x_stride, w, row_data, row_scales, row_zeros, chunks_per_group, g, acc[0]);
      accumulate_group<M, F>(x, x_stride, w, row_data, row_scales, row_zeros, chunks_per_group, g + 1, acc[1]);
    }
    if (g < groups)
      accumulate_group<M, F>(x, x_stride, w, row_data, row_scales, row_zeros, chunks_per_group, g, acc[0]);
    for (int m = 0; m < M; ++m) y[m * y_stride + row] = _mm512_reduce_add_ps(_mm512_add_ps(acc[0][m], acc[1][m]));
  }
}

// Int8 with one scale per row: unscaled products accumulate over the row, any column count
// (the tail through masked loads).
template <int M>
DEEPMOE_AVX512 void int8_rows(const float* x, int64_t x_stride, const WeightMatrix& w, float* y, int64_t y_stride,
                              int64_t row_begin, int64_t row_end) {
  const int64_t body = w.cols / kChunk * kChunk;
  for (int64_t row = row_begin; row < row_end; ++row) {
    const uint8_t* q = static_cast<const uint8_t*>(w.data) + row * w.cols;
    __m512 acc[2][M];
    for (int m = 0; m < M; ++m) acc[0][m] = acc[1][m] = _mm512_setzero_ps();
    for (int64_t k = 0; k < body; k += kChunk) {
      __m512 lo, hi;
      widen_int8(q + k, lo, hi);
      for (int m = 0; m < M; ++m) {
        const float* xk = x + m * x_stride + k;
        acc[0][m] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(xk), acc[0][m]);
        acc[1][m] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xk + 16), acc[1][m]);
      }
    }
    for (int64_t k = body; k < w.cols; k += 16) {
      const __mmask16 mask = __mmask16((1u << std::min<int64_t>(16, w.cols - k)) - 1u);
      const __m512 wv = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, q + k)));
      for (int m = 0; m < M; ++m)
        acc[0][m] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(mask, x + m * x_stride + k), acc[0][m]);
    }
    for (int m = 0; m < M; ++m)
      y[m * y_stride + row] = _mm512_reduce_add_ps(_mm512_add_ps(acc[0][m], acc[1][m])) * w.row_scales[row];
  }
}

template <int M>
DEEPMOE_AVX512 void dispatch_format(const float* x, int64_t x_stride, const WeightMatrix& w, float* y, int64_t y_stride,
                                    int64_t row_begin, int64_t row_end) {
  switch (w.format) {
    case WeightFormat::Q8_0:
      return scaled_group_rows<M, WeightFormat::Q8_0>(x, x_stride, w, y, y_stride, row_begin, row_end);
    case WeightFormat::Q4_0:
      return scaled_group_rows<M, WeightFormat::Q4_0>(x, x_stride, w, y, y_stride, row_begin, row_end);
    case WeightFormat::Int4:
      return scaled_group_rows<M, WeightFormat::Int4>(x, x_stride, w, y, y_stride, row_begin, row_end);
    case WeightFormat::Int8: return int8_rows<M>(x, x_stride, w, y, y_stride, row_begin, row_end);
    default: return;
  }
}

template <int M>
DEEPMOE_VNNI void vnni_rows(const QuantizedActivations& xq, const WeightMatrix& w, float* y, int64_t y_stride,
                            int64_t row_begin, int64_t row_end) {
  const int64_t body = w.cols / 128 * 128;
  for (int64_t row = row_begin; row < row_end; ++row) {
    const uint8_t* q = static_cast<const uint8_t*>(w.data) + row * w.cols;
    __m512i acc[2][M];
    for (int m = 0; m < M; ++m) acc[0][m] = acc[1][m] = _mm512_setzero_si512();
    for (int64_t k = 0; k < body; k += 128) {
      const __m512i w0 = _mm512_loadu_si512(q + k), w1 = _mm512_loadu_si512(q + k + 64);
      for (int m = 0; m < M; ++m) {
        const uint8_t* a = xq.values.data() + m * xq.stride + k;
        acc[0][m] = _mm512_dpbusd_epi32(acc[0][m], _mm512_loadu_si512(a), w0);
        acc[1][m] = _mm512_dpbusd_epi32(acc[1][m], _mm512_loadu_si512(a + 64), w1);
      }
    }
    // The activation rows are zero-padded to 64 bytes, so only the weights need a mask.
    for (int64_t k = body; k < w.cols; k += 64) {
      const int64_t n = std::min<int64_t>(64, w.cols - k);
      const __mmask64 mask = n == 64 ? ~__mmask64(0) : (__mmask64(1) << n) - 1;
      const __m512i wv = _mm512_maskz_loadu_epi8(mask, q + k);
      for (int m = 0; m < M; ++m)
        acc[0][m] = _mm512_dpbusd_epi32(acc[0][m], _mm512_loadu_si512(xq.values.data() + m * xq.stride + k), wv);
    }
    for (int m = 0; m < M; ++m) {
      const int32_t dot = _mm512_reduce_add_epi32(_mm512_add_epi32(acc[0][m], acc[1][m]));
      const int32_t centered = dot - xq.zero_point[size_t(m)] * w.row_sums[row];
      y[m * y_stride + row] = float(centered) * xq.scale[size_t(m)] * w.row_scales[row];
    }
  }
}

}  // namespace

bool cpu_has_avx512_vnni() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
  return has;
}

void quant_dot_rows_avx512(const float* x, int64_t x_stride, int64_t n_rows, const WeightMatrix& w, float* y,
                           int64_t y_stride, int64_t row_begin, int64_t row_end) {
  switch (n_rows) {
    case 1: return dispatch_format<1>(x, x_stride, w, y, y_stride, row_begin, row_end);
    case 2: return dispatch_format<2>(x, x_stride, w, y, y_stride, row_begin, row_end);
    case 3: return dispatch_format<3>(x, x_stride, w, y, y_stride, row_begin, row_end);
    default: return dispatch_format<4>(x, x_stride, w, y, y_stride, row_begin, row_end);
  }
}

void int8_u8_dot_rows_vnni(const QuantizedActivations& xq, int64_t n_rows, const WeightMatrix& w, float* y,
                           int64_t y_stride, int64_t row_begin, int64_t row_end) {
  switch (n_rows) {
    case 1: return vnni_rows<1>(xq, w, y, y_stride, row_begin, row_end);
    case 2: return vnni_rows<2>(xq, w, y, y_stride, row_begin, row_end);
    case 3: return vnni_rows<3>(xq, w, y, y_stride, row_begin, row_end);
    default: return vnni_rows<4>(xq, w, y, y_stride, row_begin, row_end);
  }
}

}  // namespace deepmoe
