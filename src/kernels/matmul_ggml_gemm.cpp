// See matmul_ggml_gemm.h. A packed panel holds 32 weight rows; per 32-value block it stores
//   codes:       8 groups of 4 values × 2 vectors × 16 rows × 4 bytes (1024 bytes), the order
//                in which one vpdpbusd multiplies 4 values of 16 rows by 4 broadcast activations;
//   scales:      the 32 rows' d as f32;
//   corrections: Q8_0 only, 128·Σq per row (the activations carry +128 to be unsigned).
// Q4_0's nibbles are unpacked to bytes 0..15 (the unsigned operand), and its −8 comes off as
// 8·Σ activation codes per block. Integer sums are exact; each block's sum is scaled by
// d_w·d_x and added in f32, in block order, so results do not depend on the thread count.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include "kernels/matmul_ggml_gemm.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/ggml_blocks.h"
#include "kernels/matmul_quant.h"
#include "kernels/vnni_common.h"

namespace deepmoe {

namespace {

constexpr int64_t kPanelRows = 32;  // two vectors of 16 output features
constexpr int kTileRows = 4;        // activation rows per micro-kernel pass
constexpr int kGroups = 8;          // 4-value groups per block
constexpr size_t kCodeBytes = kGroups * 2 * 64;
constexpr size_t kScaleOffset = kCodeBytes, kCorrectionOffset = kCodeBytes + 128;
constexpr size_t kPackedBlockBytes = kCodeBytes + 256;

struct alignas(64) CacheLine {
  uint8_t bytes[64];
};

__mmask16 rows_mask(int64_t valid) {
  return valid >= 16 ? __mmask16(0xffff) : valid <= 0 ? __mmask16(0) : __mmask16((1u << valid) - 1u);
}

// 16 bytes at p[r] for 16 rows as four vectors: out[j] lane r = bytes 4j..4j+3 of row r. Rows
// go four to a 512-bit vector (one per 128-bit lane), then a 4 × 4 transpose inside the lanes.
// (vpgatherdd did the same at a quarter of the speed on AMD Zen 5: measured.)
DEEPMOE_VNNI inline void transpose_rows(const uint8_t* const* p, int64_t offset, __m512i out[4]) {
  __m512i z[4];
  for (int j = 0; j < 4; ++j) {
    z[j] = _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p[j] + offset)));
    z[j] = _mm512_inserti32x4(z[j], _mm_loadu_si128(reinterpret_cast<const __m128i*>(p[j + 4] + offset)), 1);
    z[j] = _mm512_inserti32x4(z[j], _mm_loadu_si128(reinterpret_cast<const __m128i*>(p[j + 8] + offset)), 2);
    z[j] = _mm512_inserti32x4(z[j], _mm_loadu_si128(reinterpret_cast<const __m128i*>(p[j + 12] + offset)), 3);
  }
  const __m512i t0 = _mm512_unpacklo_epi32(z[0], z[1]), t1 = _mm512_unpackhi_epi32(z[0], z[1]);
  const __m512i t2 = _mm512_unpacklo_epi32(z[2], z[3]), t3 = _mm512_unpackhi_epi32(z[2], z[3]);
  out[0] = _mm512_unpacklo_epi64(t0, t2);
  out[1] = _mm512_unpackhi_epi64(t0, t2);
  out[2] = _mm512_unpacklo_epi64(t1, t3);
  out[3] = _mm512_unpackhi_epi64(t1, t3);
}

// Rows [first, first + count) of w, count ≤ 32, into `out` (blocks × kPackedBlockBytes). Rows
// past count read a row of zeros.
template <WeightFormat F>
DEEPMOE_VNNI void pack_panel(const WeightMatrix& w, int64_t first, int64_t count, uint8_t* out) {
  constexpr int64_t block_bytes = F == WeightFormat::Q8_0 ? kQ8_0BlockBytes : kQ4_0BlockBytes;
  const int64_t blocks = w.cols / kGgmlBlock;
  const int64_t row_bytes = int64_t(w.row_bytes());
  thread_local std::vector<uint8_t> zero_row;
  if (count < kPanelRows) zero_row.assign(size_t(row_bytes), 0);
  const uint8_t* base = static_cast<const uint8_t*>(w.data) + first * row_bytes;
  const __m512i low4 = _mm512_set1_epi8(0x0f), ones = _mm512_set1_epi8(1), zero = _mm512_setzero_si512();
  const __m512i offsets = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                             _mm512_set1_epi32(int32_t(row_bytes)));
  for (int v = 0; v < 2; ++v) {
    const __mmask16 valid = rows_mask(count - 16 * v);
    const uint8_t* rows[16];
    for (int r = 0; r < 16; ++r) rows[r] = 16 * v + r < count ? base + (16 * v + r) * row_bytes : zero_row.data();
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t at = b * block_bytes;
      const uint8_t* block = rows[0] + at;  // row 16v is valid whenever any row of the vector is
      uint8_t* packed = out + size_t(b) * kPackedBlockBytes;
      __m512i groups[8];
      if constexpr (F == WeightFormat::Q8_0) {
        transpose_rows(rows, at + 2, groups);
        transpose_rows(rows, at + 18, groups + 4);
        __m512i sum = zero;
        for (int g = 0; g < kGroups; ++g) {
          _mm512_store_si512(packed + (g * 2 + v) * 64, groups[g]);
          sum = _mm512_dpbusd_epi32(sum, ones, groups[g]);
        }
        _mm512_store_si512(packed + kCorrectionOffset + v * 64, _mm512_slli_epi32(sum, 7));
      } else {
        // Byte j of a block holds value j (low nibble) and value j + 16 (high nibble).
        transpose_rows(rows, at + 2, groups);
        for (int g = 0; g < kGroups / 2; ++g) {
          _mm512_store_si512(packed + (g * 2 + v) * 64, _mm512_and_si512(groups[g], low4));
          _mm512_store_si512(packed + ((g + 4) * 2 + v) * 64, _mm512_and_si512(_mm512_srli_epi32(groups[g], 4), low4));
        }
      }
      _mm512_store_ps(packed + kScaleOffset + v * 64, gather_f16(block, offsets, valid));
    }
  }
}

DEEPMOE_VNNI inline __m512i broadcast_group(const uint8_t* p) {
  int32_t bits;
  std::memcpy(&bits, p, 4);
  return _mm512_set1_epi32(bits);
}

// y rows [m0, m0 + MR) × the panel's rows [row0, row0 + count).
template <WeightFormat F, int MR>
DEEPMOE_VNNI void tile(const GgmlGemmActivations& x, int64_t m0, const uint8_t* panel, float* y, int64_t y_stride,
                       int64_t row0, int64_t count) {
  __m512 acc[MR][2];
  for (int m = 0; m < MR; ++m) acc[m][0] = acc[m][1] = _mm512_setzero_ps();
  for (int64_t b = 0; b < x.blocks; ++b) {
    const uint8_t* packed = panel + size_t(b) * kPackedBlockBytes;
    __m512i sum[MR][2];
    for (int m = 0; m < MR; ++m) sum[m][0] = sum[m][1] = _mm512_setzero_si512();
    for (int g = 0; g < kGroups; ++g) {
      const __m512i w0 = _mm512_load_si512(packed + g * 128), w1 = _mm512_load_si512(packed + g * 128 + 64);
      for (int m = 0; m < MR; ++m) {
        const __m512i a = broadcast_group(x.codes.data() + (m0 + m) * x.cols + b * kGgmlBlock + g * 4);
        if constexpr (F == WeightFormat::Q8_0) {
          sum[m][0] = _mm512_dpbusd_epi32(sum[m][0], a, w0);
          sum[m][1] = _mm512_dpbusd_epi32(sum[m][1], a, w1);
        } else {
          sum[m][0] = _mm512_dpbusd_epi32(sum[m][0], w0, a);
          sum[m][1] = _mm512_dpbusd_epi32(sum[m][1], w1, a);
        }
      }
    }
    const __m512 w_scale[2] = {_mm512_load_ps(packed + kScaleOffset), _mm512_load_ps(packed + kScaleOffset + 64)};
    for (int m = 0; m < MR; ++m) {
      const size_t at = size_t((m0 + m) * x.blocks + b);
      const __m512 x_scale = _mm512_set1_ps(x.scales[at]);
      for (int v = 0; v < 2; ++v) {
        const __m512i correction = F == WeightFormat::Q8_0 ? _mm512_load_si512(packed + kCorrectionOffset + v * 64)
                                                           : _mm512_set1_epi32(x.sums8[at]);
        const __m512 dot = _mm512_cvtepi32_ps(_mm512_sub_epi32(sum[m][v], correction));
        acc[m][v] = _mm512_fmadd_ps(dot, _mm512_mul_ps(w_scale[v], x_scale), acc[m][v]);
      }
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < 2; ++v)
      _mm512_mask_storeu_ps(y + (m0 + m) * y_stride + row0 + 16 * v, rows_mask(count - 16 * v), acc[m][v]);
}

template <WeightFormat F>
DEEPMOE_VNNI void gemm_rows(const GgmlGemmActivations& x, const WeightMatrix& w, float* y, int64_t y_stride,
                            int64_t row_begin, int64_t row_end) {
  thread_local std::vector<CacheLine> panel_storage;
  panel_storage.resize(size_t(x.blocks) * kPackedBlockBytes / sizeof(CacheLine));
  uint8_t* panel = panel_storage.data()->bytes;
  for (int64_t first = row_begin; first < row_end; first += kPanelRows) {
    const int64_t count = std::min(kPanelRows, row_end - first);
    pack_panel<F>(w, first, count, panel);
    // The next panel's rows (contiguous) come in from memory while this one is multiplied:
    // packing otherwise waits on 16 rows' cache misses at a time.
    const int64_t next_end = std::min(row_end, first + 2 * kPanelRows);
    if (next_end > first + kPanelRows) {
      const char* next = static_cast<const char*>(w.data) + (first + kPanelRows) * int64_t(w.row_bytes());
      const int64_t bytes = (next_end - first - kPanelRows) * int64_t(w.row_bytes());
      for (int64_t at = 0; at < bytes; at += 64) _mm_prefetch(next + at, _MM_HINT_T1);
    }
    int64_t m0 = 0;
    for (; m0 + kTileRows <= x.n_rows; m0 += kTileRows) tile<F, kTileRows>(x, m0, panel, y, y_stride, first, count);
    switch (x.n_rows - m0) {
      case 1: tile<F, 1>(x, m0, panel, y, y_stride, first, count); break;
      case 2: tile<F, 2>(x, m0, panel, y, y_stride, first, count); break;
      case 3: tile<F, 3>(x, m0, panel, y, y_stride, first, count); break;
      default: break;
    }
  }
}

}  // namespace

bool ggml_gemm_applies(const WeightMatrix& w) {
  // The gathers address a panel's rows with 32-bit offsets.
  return (w.format == WeightFormat::Q8_0 || w.format == WeightFormat::Q4_0) && cpu_has_avx512_vnni() &&
         w.row_bytes() * kPanelRows < (size_t(1) << 31);
}

void prepare_ggml_gemm_activations(const float* x, int64_t x_stride, int64_t n_rows, const WeightMatrix& w,
                                   GgmlGemmActivations& out) {
  out.n_rows = n_rows;
  out.cols = w.cols;
  out.blocks = w.cols / kGgmlBlock;
  out.codes.resize(size_t(n_rows * w.cols));
  out.scales.resize(size_t(n_rows * out.blocks));
  const bool biased = w.format == WeightFormat::Q8_0;
  out.sums8.resize(biased ? 0 : size_t(n_rows * out.blocks));
  for (int64_t m = 0; m < n_rows; ++m) {
    int8_t* codes = reinterpret_cast<int8_t*>(out.codes.data() + m * w.cols);
    quantize_activations_q8_0(x + m * x_stride, w.cols, codes, out.scales.data() + m * out.blocks);
    if (biased) {
      for (int64_t k = 0; k < w.cols; ++k) out.codes[size_t(m * w.cols + k)] ^= 0x80;  // int8 + 128 as uint8
      continue;
    }
    for (int64_t b = 0; b < out.blocks; ++b) {
      int32_t sum = 0;
      for (int64_t j = 0; j < kGgmlBlock; ++j) sum += codes[b * kGgmlBlock + j];
      out.sums8[size_t(m * out.blocks + b)] = 8 * sum;
    }
  }
}

void ggml_gemm_rows(const GgmlGemmActivations& x, const WeightMatrix& w, float* y, int64_t y_stride, int64_t row_begin,
                    int64_t row_end) {
  if (w.format == WeightFormat::Q8_0) return gemm_rows<WeightFormat::Q8_0>(x, w, y, y_stride, row_begin, row_end);
  return gemm_rows<WeightFormat::Q4_0>(x, w, y, y_stride, row_begin, row_end);
}

}  // namespace deepmoe
