// Q8_0 decode (M <= kSmallBatchMax) with AVX-512 VNNI, computed the way llama.cpp computes Q8_0:
// activations rounded to Q8_0 blocks of 32, each block's exact integer dot product from
// vpdpbusd, scaled by d_w·d_x in f32. One 512-bit vpdpbusd covers two blocks (lanes 0-7 the first,
// 8-15 the second), and each lane is scaled by its block's d_w·d_x: no folding of sums across
// lanes before the end of a row. Faster than widening the codes to f32 (docs/benchmarks.md).
#pragma once
#include <cstdint>
#include <vector>

#include "core/aligned_vector.h"
#include "kernels/matmul.h"

namespace deepmoe {

// The activations as the kernel reads them, prepared once per matmul call.
struct Q8Activations {
  int64_t n_rows = 0, cols = 0, pairs = 0;  // pairs of blocks per row (the last one zero-padded)
  // [n_rows, pairs, 64]: codes + 128 as uint8, vpdpbusd's unsigned operand; the weights' Σq·128
  // takes the offset back off.
  AlignedVector<uint8_t> codes;
  AlignedVector<float> scales;  // [n_rows, pairs, 16]: each lane's block d
};

// Q8_0 on a CPU with AVX-512 VNNI.
bool q8_vnni_applies(const WeightMatrix& w);
void prepare_q8_activations(const float* x, int64_t x_stride, int64_t n_rows, int64_t cols, Q8Activations& out);
void q8_dot_rows_vnni(const Q8Activations& x, const WeightMatrix& w, float* y, int64_t y_stride, int64_t row_begin,
                      int64_t row_end);

// The values the kernel multiplies (code·d), packed [n_rows, cols].
void dequantize_q8_activations(const Q8Activations& x, float* out);

}  // namespace deepmoe
