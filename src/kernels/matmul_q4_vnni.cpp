// See matmul_q4_vnni.h. Layout of one superblock of 16 chunks (512 values) per weight row:
// quad q holds chunks 4q..4q+3, one 16-byte lane each; their nibbles split into lo (values 0-15
// of each chunk) and hi (16-31), matched by the activations' 128 bytes
// [lo(4q) .. lo(4q+3) | hi(4q) .. hi(4q+3)].
// Two 512-bit vpdpbusd leave 4 partial sums per chunk in lanes 4i..4i+3, and a 4×4
// transpose-add over the 4 quads gives one vector whose lane L holds chunk kChunkOfLane[L].
// (Measured against pairs of chunks in 256-bit vpdpbusd joined afterwards: 1 thread, M = 1,
// 100 -> 113 GFLOP/s; M = 4, 145 -> 252.)
// A quad's lanes come from one word permute out of the superblock's five 64-byte windows (loaded
// for the scales anyway). On Zen 5 the kernel is bound by its loads: two per cycle, but a 64-byte
// load that crosses cache lines (a window of every other 288-byte superblock does) takes both
// slots. Against a 16-byte load per chunk (three of them broadcast and blended), in cache, 1
// thread: M = 1 40 -> 58 GB/s, M = 2 34 -> 41, M = 4 23 -> 25; from DRAM M = 1-4 equal or
// better. (Before the activations were aligned to 64 bytes, M = 4 from DRAM had lost.)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include "kernels/matmul_q4_vnni.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/ggml_blocks.h"
#include "kernels/matmul_quant.h"
#include "kernels/vnni_common.h"

namespace deepmoe {

namespace {

constexpr int64_t kChunk = 32, kChunksPerSuper = 16;
// The chunk whose sum lands in lane L of the folded vector.
constexpr int kChunkOfLane[16] = {0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15};
// Its inverse (the permutation is its own inverse: lane 4i + j ↔ chunk 4j + i).
constexpr const int* kLaneOfChunk = kChunkOfLane;

// A superblock's 288 bytes as five 64-byte windows (the fifth only 32 bytes, never read past);
// past `valid` chunks the bytes are not read and are 0.
template <bool Full>
DEEPMOE_VNNI inline void load_windows(const uint8_t* p, int64_t valid, __m512i* window) {
  if (Full) {
    // Plain loads where the whole superblock is there: masked loads that miss the cache are
    // several times slower on Zen 5 (measured in attention_f32.cpp).
    for (int k = 0; k < 4; ++k) window[k] = _mm512_loadu_si512(p + 64 * k);
    window[4] = _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 256)));
    return;
  }
  const int64_t bytes = valid * kQ4_0BlockBytes;
  for (int k = 0; k < 5; ++k) {
    const __mmask64 in_range = k == 4 ? __mmask64(0xffffffff) : ~__mmask64(0);
    const __mmask64 lanes = bytes <= 64 * k         ? 0
                            : bytes >= 64 * (k + 1) ? in_range
                                                    : in_range & ((__mmask64(1) << (bytes - 64 * k)) - 1);
    window[k] = _mm512_maskz_loadu_epi8(lanes, p + 64 * k);
  }
}

// The 16 f16 block scales of a superblock in lane order, as f32. They sit 18 bytes apart: quad
// q's four lie in windows q and q + 1, at words 4q + 9i, so one word permute per quad moves them
// to lanes 4i + q (kChunkOfLane). (A vpgatherdd took a fifth of the kernel's cycles on Zen 5;
// moving the nibbles with byte permutes from the same windows was slower than the loads below.)
DEEPMOE_VNNI inline __m512 superblock_scales(const __m512i* window) {
  struct Index {
    alignas(64) int16_t words[4][32] = {};
    constexpr Index() {
      for (int q = 0; q < 4; ++q)
        for (int i = 0; i < 4; ++i) words[q][4 * i + q] = int16_t(4 * q + 9 * i);
    }
  };
  static constexpr Index kIndex;
  __m512i words = _mm512_setzero_si512();
  for (int q = 0; q < 4; ++q)
    words = _mm512_or_si512(words, _mm512_maskz_permutex2var_epi16(__mmask32(0x1111) << q, window[q],
                                                                   _mm512_load_si512(kIndex.words[q]), window[q + 1]));
  return _mm512_cvtph_ps(_mm512_castsi512_si256(words));
}

// Quad q's 64 nibble bytes (chunks 4q..4q+3, 16 each) from windows q and q + 1: chunk c's
// nibbles start 2 bytes into its 18, so they are whole words (4q + 9i + 1 .. + 8 of window q).
struct NibbleIndex {
  alignas(64) int16_t words[4][32] = {};
  constexpr NibbleIndex() {
    for (int q = 0; q < 4; ++q)
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 8; ++j) words[q][8 * i + j] = int16_t(4 * q + 9 * i + 1 + j);
  }
};
constexpr NibbleIndex kNibbleIndex;

// Σ over each chunk of (q − 8)·x_q for the 16 chunks of superblock s, lane L = chunk
// kChunkOfLane[L], for M activation rows; then scaled into acc.
template <int M, bool Full>
DEEPMOE_VNNI inline void superblock(const Q4Activations& x, const uint8_t* row_data, int64_t s, int64_t chunks,
                                    __m512* acc, int64_t row_bytes) {
  const int64_t first = s * kChunksPerSuper;
  const int64_t valid = Full ? kChunksPerSuper : std::min(kChunksPerSuper, chunks - first);
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  __m512i window[5];
  load_windows<Full>(row_data + first * kQ4_0BlockBytes, valid, window);
  // Held in registers: the compiler would otherwise fold each use into a fresh 64-byte load
  // (loads are what bounds this kernel).
  if constexpr (M == 1)
    for (auto& k : window) asm("" : "+v"(k));
  __m512i folded[M][4];
  for (int64_t q = 0; q < 4; ++q) {
    const uint8_t* quad_data = row_data + (first + 4 * q) * kQ4_0BlockBytes;
    _mm_prefetch(reinterpret_cast<const char*>(quad_data + kPrefetchRows * row_bytes), _MM_HINT_T0);
    const __m512i v = _mm512_permutex2var_epi16(window[q], _mm512_load_si512(kNibbleIndex.words[q]), window[q + 1]);
    const __m512i lo = _mm512_and_si512(v, low4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
    for (int m = 0; m < M; ++m) {
      const int8_t* xv = x.values.data() + ((m * x.superblocks + s) * 4 + q) * 128;
      // Low and high halves into one accumulator: lanes 4i..4i+3 hold chunk a+i's sums.
      const __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, _mm512_loadu_si512(xv));
      folded[m][q] = _mm512_dpbusd_epi32(d, hi, _mm512_loadu_si512(xv + 64));
    }
  }
  const __m512 w_scale = superblock_scales(window);
  for (int m = 0; m < M; ++m) {
    const __m512i* g = folded[m];
    const __m512i t0 = _mm512_add_epi32(_mm512_unpacklo_epi32(g[0], g[1]), _mm512_unpackhi_epi32(g[0], g[1]));
    const __m512i t1 = _mm512_add_epi32(_mm512_unpacklo_epi32(g[2], g[3]), _mm512_unpackhi_epi32(g[2], g[3]));
    const __m512i sums = _mm512_add_epi32(_mm512_unpacklo_epi64(t0, t1), _mm512_unpackhi_epi64(t0, t1));
    const size_t at = size_t((m * x.superblocks + s) * kChunksPerSuper);
    const __m512i x_sums = _mm512_loadu_si512(x.sums.data() + at);
    const __m512i centered = _mm512_sub_epi32(sums, _mm512_slli_epi32(x_sums, 3));  // Σ (q − 8)·x_q
    const __m512 scale = _mm512_mul_ps(w_scale, _mm512_loadu_ps(x.scales.data() + at));
    acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(centered), scale, acc[m]);
  }
}

template <int M>
DEEPMOE_VNNI void rows(const Q4Activations& x, const WeightMatrix& w, float* y, int64_t y_stride, int64_t row_begin,
                       int64_t row_end) {
  const int64_t chunks = w.cols / kChunk, full = chunks / kChunksPerSuper;
  const size_t row_bytes = w.row_bytes();
  for (int64_t row = row_begin; row < row_end; ++row) {
    const uint8_t* row_data = static_cast<const uint8_t*>(w.data) + size_t(row) * row_bytes;
    __m512 acc[M];
    for (int m = 0; m < M; ++m) acc[m] = _mm512_setzero_ps();
    for (int64_t s = 0; s < full; ++s) superblock<M, true>(x, row_data, s, chunks, acc, int64_t(row_bytes));
    if (full < x.superblocks) superblock<M, false>(x, row_data, full, chunks, acc, int64_t(row_bytes));
    for (int m = 0; m < M; ++m) y[m * y_stride + row] = _mm512_reduce_add_ps(acc[m]);
  }
}

}  // namespace

bool q4_vnni_applies(const WeightMatrix& w) { return w.format == WeightFormat::Q4_0 && cpu_has_avx512_vnni(); }

void prepare_q4_activations(const float* x, int64_t x_stride, int64_t n_rows, int64_t cols, Q4Activations& out) {
  const int64_t chunks = cols / kChunk;
  out.n_rows = n_rows;
  out.cols = cols;
  out.superblocks = (chunks + kChunksPerSuper - 1) / kChunksPerSuper;
  // Called hundreds of times per token (every head's k_b/v_b slice in attention): no allocation.
  // A partial last superblock's missing chunks meet zero weights and scales; they are cleared
  // anyway, so that a stale non-finite value from an earlier call cannot turn 0 into NaN.
  const size_t blocks = size_t(n_rows * out.superblocks);
  out.values.resize(blocks * 512);
  out.scales.resize(blocks * kChunksPerSuper);
  out.sums.resize(blocks * kChunksPerSuper);
  thread_local std::vector<int8_t> q;
  thread_local std::vector<float> d;
  q.resize(size_t(cols));
  d.resize(size_t(chunks));
  for (int64_t m = 0; m < n_rows; ++m) {
    if (chunks % kChunksPerSuper != 0) {
      const size_t last = size_t(m * out.superblocks + out.superblocks - 1);
      std::fill_n(out.values.data() + last * 512, 512, int8_t(0));
      std::fill_n(out.scales.data() + last * kChunksPerSuper, kChunksPerSuper, 0.0f);
      std::fill_n(out.sums.data() + last * kChunksPerSuper, kChunksPerSuper, 0);
    }
    quantize_activations_q8_0(x + m * x_stride, chunks * kChunk, q.data(), d.data());
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t s = c / kChunksPerSuper, in_super = c % kChunksPerSuper, quad = in_super / 4;
      // [lo(4q) .. lo(4q+3) | hi(4q) .. hi(4q+3)], 16 bytes each
      int8_t* lo = out.values.data() + ((m * out.superblocks + s) * 4 + quad) * 128 + (in_super % 4) * 16;
      const int8_t* codes = q.data() + c * kChunk;
      std::memcpy(lo, codes, 16);
      std::memcpy(lo + 64, codes + 16, 16);
      int32_t sum = 0;
      for (int64_t j = 0; j < kChunk; ++j) sum += codes[j];
      const size_t at = size_t((m * out.superblocks + s) * kChunksPerSuper + kLaneOfChunk[in_super]);
      out.scales[at] = d[size_t(c)];
      out.sums[at] = sum;
    }
  }
}

void dequantize_q4_activations(const Q4Activations& x, float* out) {
  for (int64_t m = 0; m < x.n_rows; ++m)
    for (int64_t k = 0; k < x.cols; ++k) {
      const int64_t c = k / kChunk, j = k % kChunk, s = c / kChunksPerSuper, in_super = c % kChunksPerSuper;
      const int8_t q = x.values[size_t(((m * x.superblocks + s) * 4 + in_super / 4) * 128 + (j < 16 ? 0 : 64) +
                                       (in_super % 4) * 16 + j % 16)];
      out[m * x.cols + k] =
          float(q) * x.scales[size_t((m * x.superblocks + s) * kChunksPerSuper + kLaneOfChunk[in_super])];
    }
}

void q4_dot_rows_vnni(const Q4Activations& x, const WeightMatrix& w, float* y, int64_t y_stride, int64_t row_begin,
                      int64_t row_end) {
  switch (x.n_rows) {
    case 1: return rows<1>(x, w, y, y_stride, row_begin, row_end);
    case 2: return rows<2>(x, w, y, y_stride, row_begin, row_end);
    case 3: return rows<3>(x, w, y, y_stride, row_begin, row_end);
    default: return rows<4>(x, w, y, y_stride, row_begin, row_end);
  }
}

}  // namespace deepmoe
