// What the f32 AVX-512 kernels share (matmul_small_batch_avx512, attention_f32): the target
// attribute and the in-order sum of a vector's lanes. Include only from files whose callers check
// cpu_has_avx512() first.
#pragma once
#include <immintrin.h>

namespace deepmoe {

#define DEEPMOE_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))

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
