// See attention_f32.h. Register tiles: scores 4 query rows × 4 cached rows (16 accumulators,
// 8 loads per 16 FMAs), weighted sums 4 rows × 64 columns (4 loads and 4 broadcasts per 16).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include "kernels/attention_f32.h"

#include <immintrin.h>

#include <algorithm>

#include "kernels/avx512_common.h"
#include "kernels/matmul.h"
#include "kernels/matmul_small_batch_avx512.h"

namespace deepmoe {

namespace {

// Used up to this many query rows; above, OpenBLAS.
constexpr int64_t kSmallQueryRows = 64;

DEEPMOE_AVX512 inline __mmask16 first_lanes(int64_t count) {
  return count >= 16 ? __mmask16(0xffff) : __mmask16((1u << count) - 1);
}

// Plain loads but for the tail: masked loads that miss the cache (the cached rows come from
// DRAM after a token's weights went through) were several times slower.
template <bool Masked>
DEEPMOE_AVX512 inline __m512 load(const float* x, __mmask16 mask) {
  return Masked ? _mm512_maskz_loadu_ps(mask, x) : _mm512_loadu_ps(x);
}

// 16 values of k (or the masked tail) into an R × C tile of score accumulators.
template <int R, int C, bool Masked>
DEEPMOE_AVX512 inline void score_step(const float* a, int64_t lda, const float* b, int64_t ldb, __mmask16 mask,
                                      __m512 (&acc)[R][C]) {
  __m512 bv[C];
  for (int j = 0; j < C; ++j) bv[j] = load<Masked>(b + j * ldb, mask);
  for (int i = 0; i < R; ++i) {
    const __m512 av = load<Masked>(a + i * lda, mask);
    for (int j = 0; j < C; ++j) acc[i][j] = _mm512_fmadd_ps(av, bv[j], acc[i][j]);
  }
}

// R query rows × C cached rows of scores.
template <int R, int C>
DEEPMOE_AVX512 void score_tile(int64_t k, float alpha, const float* a, int64_t lda, const float* b, int64_t ldb,
                               float* c, int64_t ldc) {
  __m512 acc[R][C];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < C; ++j) acc[i][j] = _mm512_setzero_ps();
  int64_t p = 0;
  for (; p + 16 <= k; p += 16) score_step<R, C, false>(a + p, lda, b + p, ldb, 0, acc);
  if (p < k) score_step<R, C, true>(a + p, lda, b + p, ldb, first_lanes(k - p), acc);
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < C; ++j) c[i * ldc + j] = alpha * sum_lanes_in_order(acc[i][j]);
}

template <int R>
DEEPMOE_AVX512 void score_rows(int64_t n, int64_t k, float alpha, const float* a, int64_t lda, const float* b,
                               int64_t ldb, float* c, int64_t ldc) {
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) score_tile<R, 4>(k, alpha, a, lda, b + j * ldb, ldb, c + j, ldc);
  for (; j < n; ++j) score_tile<R, 1>(k, alpha, a, lda, b + j * ldb, ldb, c + j, ldc);
}

DEEPMOE_AVX512 void scores_avx512(int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                                  const float* b, int64_t ldb, float* c, int64_t ldc) {
  int64_t i = 0;
  for (; i + 4 <= m; i += 4) score_rows<4>(n, k, alpha, a + i * lda, lda, b, ldb, c + i * ldc, ldc);
  for (; i < m; ++i) score_rows<1>(n, k, alpha, a + i * lda, lda, b, ldb, c + i * ldc, ldc);
}

// R rows × up to 64 columns (V vectors, the last masked) of weighted sums.
template <int R, int V>
DEEPMOE_AVX512 void weighted_tile(int64_t columns, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
                                  float* c, int64_t ldc) {
  __m512 acc[R][V];
  for (int i = 0; i < R; ++i)
    for (int v = 0; v < V; ++v) acc[i][v] = _mm512_setzero_ps();
  const __mmask16 last = first_lanes(columns - 16 * (V - 1));
  const bool full = columns == 16 * V;  // plain loads then (see score_tile)
  for (int64_t p = 0; p < k; ++p) {
    __m512 bv[V];
    for (int v = 0; v < V; ++v)
      bv[v] = v < V - 1 || full ? load<false>(b + p * ldb + 16 * v, 0) : load<true>(b + p * ldb + 16 * v, last);
    for (int i = 0; i < R; ++i) {
      const __m512 weight = _mm512_set1_ps(a[i * lda + p]);
      for (int v = 0; v < V; ++v) acc[i][v] = _mm512_fmadd_ps(weight, bv[v], acc[i][v]);
    }
  }
  for (int i = 0; i < R; ++i)
    for (int v = 0; v < V; ++v)
      _mm512_mask_storeu_ps(c + i * ldc + 16 * v, v == V - 1 ? last : __mmask16(0xffff), acc[i][v]);
}

template <int R>
DEEPMOE_AVX512 void weighted_block(int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
                                   float* c, int64_t ldc) {
  for (int64_t col = 0; col < n; col += 64) {
    const int64_t columns = std::min<int64_t>(64, n - col);
    switch ((columns + 15) / 16) {
      case 1: weighted_tile<R, 1>(columns, k, a, lda, b + col, ldb, c + col, ldc); break;
      case 2: weighted_tile<R, 2>(columns, k, a, lda, b + col, ldb, c + col, ldc); break;
      case 3: weighted_tile<R, 3>(columns, k, a, lda, b + col, ldb, c + col, ldc); break;
      default: weighted_tile<R, 4>(columns, k, a, lda, b + col, ldb, c + col, ldc); break;
    }
  }
}

DEEPMOE_AVX512 void weighted_avx512(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                                    int64_t ldb, float* c, int64_t ldc) {
  int64_t i = 0;
  for (; i + 4 <= m; i += 4) weighted_block<4>(n, k, a + i * lda, lda, b, ldb, c + i * ldc, ldc);
  for (; i < m; ++i) weighted_block<1>(n, k, a + i * lda, lda, b, ldb, c + i * ldc, ldc);
}

}  // namespace

void query_key_scores(bool batch_invariant, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                      const float* b, int64_t ldb, float* c, int64_t ldc) {
  if (cpu_has_avx512() && (m <= kSmallQueryRows || batch_invariant))
    return scores_avx512(m, n, k, alpha, a, lda, b, ldb, c, ldc);
  if (batch_invariant) {  // one row per call: the same rounding whatever m is
    for (int64_t i = 0; i < m; ++i) gemm_f32(true, 1, n, k, alpha, a + i * lda, lda, b, ldb, 0.0f, c + i * ldc, ldc);
    return;
  }
  gemm_f32(true, m, n, k, alpha, a, lda, b, ldb, 0.0f, c, ldc);
}

void weighted_rows(bool batch_invariant, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                   int64_t ldb, float* c, int64_t ldc) {
  if (cpu_has_avx512() && (m <= kSmallQueryRows || batch_invariant))
    return weighted_avx512(m, n, k, a, lda, b, ldb, c, ldc);
  if (batch_invariant) {
    for (int64_t i = 0; i < m; ++i) gemm_f32(false, 1, n, k, 1.0f, a + i * lda, lda, b, ldb, 0.0f, c + i * ldc, ldc);
    return;
  }
  gemm_f32(false, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
}

}  // namespace deepmoe
