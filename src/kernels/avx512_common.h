// What the f32 AVX-512 kernels share (matmul_small_batch_avx512, matmul_invariant_f32,
// attention_f32): the target attribute, bf16 widening and the in-order sum of a vector's lanes.
// Include only from files whose callers check cpu_has_avx512() first.
#pragma once
#include <immintrin.h>

namespace deepmoe {

#define DEEPMOE_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))

// 16 bf16 values to f32, exactly: each one's bits become the high half of an f32. (GCC 12 warns
// falsely of _mm512_undefined_epi32() inside _mm512_cvtepu16_epi32; callers' files silence it.)
DEEPMOE_AVX512 inline __m512 widen_bf16(__m256i bits) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

// Lane 0 + lane 1 + ... + lane 15, in that order (GCC 12 warns falsely inside
// _mm512_reduce_add_ps; a fixed order also keeps results independent of how work is split).
DEEPMOE_AVX512 inline float sum_lanes_in_order(__m512 v) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, v);
  float total = 0.0f;
  for (float lane : lanes) total += lane;
  return total;
}

}  // namespace deepmoe
