// Prefill (M > kSmallBatchMax) for Q8_0 and Q4_0 weights on CPUs with AVX-512 VNNI: an integer
// GEMM on the activations rounded to Q8_0 blocks (the values llama.cpp multiplies), instead of
// widening the weights to f32 for sgemm. Per 32-value block, vpdpbusd forms the exact integer dot
// product, which is scaled by d_w·d_x and added in f32, the way llama.cpp's kernels do.
//
// Each thread packs 32 output features at a time into vpdpbusd's order (16 rows × 4 bytes per
// vector) and sweeps all activation rows 4 at a time over that panel, which stays in L2.
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/matmul.h"

namespace deepmoe {

// The activations as the GEMM reads them, prepared once per matmul call.
struct GgmlGemmActivations {
  int64_t n_rows = 0, cols = 0, blocks = 0;
  // [n_rows, cols] Q8_0 codes; for Q8_0 weights stored + 128 (vpdpbusd's unsigned operand),
  // for Q4_0 as int8 (the nibbles, 0..15, are the unsigned operand there).
  std::vector<uint8_t> codes;
  std::vector<float> scales;   // [n_rows, blocks]: the blocks' d (after f16 rounding)
  std::vector<int32_t> sums8;  // Q4_0 only, [n_rows, blocks]: 8·Σ codes, its zero-point term
};

// Q8_0 or Q4_0 weights on a CPU with AVX-512 VNNI.
bool ggml_gemm_applies(const WeightMatrix& w);
void prepare_ggml_gemm_activations(const float* x, int64_t x_stride, int64_t n_rows, const WeightMatrix& w,
                                   GgmlGemmActivations& out);
// y[m, row] for every activation row m and rows [row_begin, row_end) of w.
void ggml_gemm_rows(const GgmlGemmActivations& x, const WeightMatrix& w, float* y, int64_t y_stride, int64_t row_begin,
                    int64_t row_end);

}  // namespace deepmoe
