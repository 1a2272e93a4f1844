// Q4_0 decode (M <= kSmallBatchMax) with AVX-512 VNNI, the way llama.cpp computes Q4_0:
// activations rounded to Q8_0 blocks of 32 (round_activations_q8_0's values), each 32-value
// chunk's integer dot product from vpdpbusd, and 16 chunks' sums folded into one vector so their
// scales are applied with one FMA. Faster than widening nibbles to f32 (docs/benchmarks.md).
#pragma once
#include <cstdint>
#include <vector>

#include "core/aligned_vector.h"
#include "kernels/matmul.h"

namespace deepmoe {

// The activations as the kernel reads them, prepared once per matmul call.
struct Q4Activations {
  int64_t n_rows = 0, cols = 0, superblocks = 0;
  // Per row and superblock of 16 chunks: 4 quads × 128 bytes of int8 in the kernel's order, then
  // per-chunk scale (f32) and Σq (int32) in the order the folded sums come out.
  AlignedVector<int8_t> values;
  AlignedVector<float> scales;
  AlignedVector<int32_t> sums;
};

// Q4_0 on a CPU with AVX-512 VNNI.
bool q4_vnni_applies(const WeightMatrix& w);
void prepare_q4_activations(const float* x, int64_t x_stride, int64_t n_rows, int64_t cols, Q4Activations& out);
void q4_dot_rows_vnni(const Q4Activations& x, const WeightMatrix& w, float* y, int64_t y_stride, int64_t row_begin,
                      int64_t row_end);

// The activations' int8 values as f32 (q·scale), packed [n_rows, cols]: what the kernel multiplies.
void dequantize_q4_activations(const Q4Activations& x, float* out);

}  // namespace deepmoe
