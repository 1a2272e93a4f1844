// What the AVX-512 VNNI kernels for ggml blocks share (matmul_q4_vnni, matmul_q8_vnni,
// matmul_ggml_gemm): the target attribute, the prefetch distance and reading f16 block scales.
// Include only from files whose callers check cpu_has_avx512_vnni() first.
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace deepmoe {

#define DEEPMOE_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,f16c")))

// Decode kernels prefetch the weight row this many rows ahead, a cache line per step: the
// hardware prefetcher alone left them at 30 (Q8_0, 1 thread) and 36 GB/s (Q4_0, 2 threads); this
// reaches 38 and 42 (docs/benchmarks.md; distances 1-16 measured, 8 best). Prefetches never
// fault, so running past the last row is harmless.
constexpr int64_t kPrefetchRows = 8;

// 16 f16 values, lane i at base + offsets[i] (4 bytes readable there, as at a block's start), as
// f32; lanes outside `lanes` are 0 and read nothing.
DEEPMOE_VNNI inline __m512 gather_f16(const uint8_t* base, __m512i offsets, __mmask16 lanes) {
  const __m512i bits = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), lanes, offsets, base, 1);
  return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(bits));
}

}  // namespace deepmoe
