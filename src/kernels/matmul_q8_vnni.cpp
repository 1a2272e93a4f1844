// See matmul_q8_vnni.h. Per pair of blocks (a, b) of a weight row: one 512-bit vector holds a's
// 32 codes then b's (a load and a broadcasting load blended: no shuffle-port insert); vpdpbusd
// with the activations (+128) gives 16 lane sums, 8 per block; 128·Σq of the lane (vpdpbusd with
// ones) comes off, and acc += f32(sums)·d_w·d_x per lane. The scales of 16 blocks come with one
// gather per row and superblock and are spread to their lanes with one permute per pair.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include "kernels/matmul_q8_vnni.h"

#include <immintrin.h>

#include <algorithm>

#include "kernels/ggml_blocks.h"
#include "kernels/matmul_quant.h"
#include "kernels/vnni_common.h"

namespace deepmoe {

namespace {

constexpr int64_t kLanes = 16, kPairBytes = 2 * kGgmlBlock, kPairsPerSuper = 8;

// Pairs [first_pair, first_pair + count) of one weight row (blocks past `blocks` read as
// zeros) into acc[pair parity][m].
template <int M, bool Full>
DEEPMOE_VNNI inline void superblock(const Q8Activations& x, const uint8_t* row_data, int64_t blocks, int64_t first_pair,
                                    int64_t count, __m512 (*acc)[M], int64_t row_bytes) {
  const int64_t first_block = 2 * first_pair;
  const __mmask16 scale_mask =
      Full ? __mmask16(0xffff) : __mmask16((1u << std::min<int64_t>(16, blocks - first_block)) - 1u);
  const __m512i offsets = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                             _mm512_set1_epi32(int32_t(kQ8_0BlockBytes)));
  const __m512 w_scales = gather_f16(row_data + first_block * kQ8_0BlockBytes, offsets, scale_mask);
  const __m512i lane_block = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
  const __m512i ones = _mm512_set1_epi8(1);
  for (int64_t i = 0; i < count; ++i) {
    const int64_t p = first_pair + i;
    const uint8_t* a = row_data + 2 * p * kQ8_0BlockBytes + 2;
    _mm_prefetch(reinterpret_cast<const char*>(a + kPrefetchRows * row_bytes), _MM_HINT_T0);
    const __m512i lo = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a)));
    const __m512i w = Full || 2 * p + 1 < blocks
                          ? _mm512_mask_broadcast_i64x4(
                                lo, 0xf0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + kQ8_0BlockBytes)))
                          : _mm512_maskz_mov_epi64(0x0f, lo);
    const __m512i weight_offset = _mm512_slli_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, w), 7);
    const __m512 w_scale = _mm512_permutexvar_ps(_mm512_add_epi32(lane_block, _mm512_set1_epi32(int(2 * i))), w_scales);
    for (int m = 0; m < M; ++m) {
      const size_t pair = size_t(m * x.pairs + p);
      const __m512i sums = _mm512_sub_epi32(
          _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_loadu_si512(x.codes.data() + pair * kPairBytes), w),
          weight_offset);
      const __m512 scale = _mm512_mul_ps(w_scale, _mm512_loadu_ps(x.scales.data() + pair * kLanes));
      acc[i & 1][m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), scale, acc[i & 1][m]);
    }
  }
}

template <int M>
DEEPMOE_VNNI void rows(const Q8Activations& x, const WeightMatrix& w, float* y, int64_t y_stride, int64_t row_begin,
                       int64_t row_end) {
  const int64_t blocks = w.cols / kGgmlBlock, full = x.pairs / kPairsPerSuper;
  const size_t row_bytes = w.row_bytes();
  for (int64_t row = row_begin; row < row_end; ++row) {
    const uint8_t* row_data = static_cast<const uint8_t*>(w.data) + size_t(row) * row_bytes;
    __m512 acc[2][M];
    for (int m = 0; m < M; ++m) acc[0][m] = acc[1][m] = _mm512_setzero_ps();
    for (int64_t s = 0; s < full; ++s)
      superblock<M, true>(x, row_data, blocks, s * kPairsPerSuper, kPairsPerSuper, acc, int64_t(row_bytes));
    if (full * kPairsPerSuper < x.pairs)
      superblock<M, false>(x, row_data, blocks, full * kPairsPerSuper, x.pairs - full * kPairsPerSuper, acc,
                           int64_t(row_bytes));
    for (int m = 0; m < M; ++m) y[m * y_stride + row] = _mm512_reduce_add_ps(_mm512_add_ps(acc[0][m], acc[1][m]));
  }
}

}  // namespace

bool q8_vnni_applies(const WeightMatrix& w) { return w.format == WeightFormat::Q8_0 && cpu_has_avx512_vnni(); }

void prepare_q8_activations(const float* x, int64_t x_stride, int64_t n_rows, int64_t cols, Q8Activations& out) {
  const int64_t blocks = cols / kGgmlBlock;
  out.n_rows = n_rows;
  out.cols = cols;
  out.pairs = (blocks + 1) / 2;
  const size_t row_codes = size_t(out.pairs * kPairBytes);
  out.codes.assign(size_t(n_rows) * row_codes, 128);  // the padding block multiplies as zeros
  out.scales.assign(size_t(n_rows * out.pairs * kLanes), 0.0f);
  thread_local std::vector<int8_t> q;
  thread_local std::vector<float> d;
  q.resize(size_t(cols));
  d.resize(size_t(blocks));
  for (int64_t m = 0; m < n_rows; ++m) {
    quantize_activations_q8_0(x + m * x_stride, cols, q.data(), d.data());
    uint8_t* codes = out.codes.data() + size_t(m) * row_codes;
    for (int64_t k = 0; k < cols; ++k) codes[k] = uint8_t(q[size_t(k)]) ^ 0x80;  // int8 + 128 as uint8
    float* scales = out.scales.data() + size_t(m * out.pairs * kLanes);
    for (int64_t b = 0; b < blocks; ++b) std::fill_n(scales + b * (kLanes / 2), kLanes / 2, d[size_t(b)]);
  }
}

void q8_dot_rows_vnni(const Q8Activations& x, const WeightMatrix& w, float* y, int64_t y_stride, int64_t row_begin,
                      int64_t row_end) {
  switch (x.n_rows) {
    case 1: return rows<1>(x, w, y, y_stride, row_begin, row_end);
    case 2: return rows<2>(x, w, y, y_stride, row_begin, row_end);
    case 3: return rows<3>(x, w, y, y_stride, row_begin, row_end);
    default: return rows<4>(x, w, y, y_stride, row_begin, row_end);
  }
}

void dequantize_q8_activations(const Q8Activations& x, float* out) {
  for (int64_t m = 0; m < x.n_rows; ++m)
    for (int64_t k = 0; k < x.cols; ++k)
      out[m * x.cols + k] = float(int(x.codes[size_t(m * x.pairs * kPairBytes + k)]) - 128) *
                            x.scales[size_t(m * x.pairs * kLanes + k / kGgmlBlock * (kLanes / 2))];
}

}  // namespace deepmoe
