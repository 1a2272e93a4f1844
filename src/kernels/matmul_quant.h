// Decode kernels (M <= kSmallBatchMax activation rows) for quantized weights: each weight row is
// read once, widened in registers and dotted with every activation row. AVX-512 versions
// (matmul_quant_avx512.cpp; VNNI for W8A8) are chosen at run time; the portable versions here
// are built for AVX2 and for any x86-64 (target_clones) and picked by the loader.
#pragma once
#include <cstdint>

#include "kernels/matmul.h"
#include "kernels/quantize.h"

namespace deepmoe {

// y[m, row] = x[m, :] · dequantized w[row, :], rows [row_begin, row_end); Q8_0, Q4_0, Int8, Int4.
// portable: the portable kernels even where AVX-512 exists (ContextOptions::portable_quant_kernels).
void quant_dot_rows(const float* x, int64_t x_stride, int64_t n_rows, const WeightMatrix& w, float* y, int64_t y_stride,
                    int64_t row_begin, int64_t row_end, bool portable);

// W8A8: y[m, row] = s_w[row]·s_x[m]·(Σ_k xq[m, k]·q[row, k] − z_x[m]·Σ_k q[row, k]), Int8 weights
// with row_sums, integer accumulation.
void int8_u8_dot_rows(const QuantizedActivations& xq, int64_t n_rows, const WeightMatrix& w, float* y, int64_t y_stride,
                      int64_t row_begin, int64_t row_end, bool portable);

// The AVX-512 versions (defined only for CPUs that report the features; call through the above).
bool cpu_has_avx512_vnni();
void quant_dot_rows_avx512(const float* x, int64_t x_stride, int64_t n_rows, const WeightMatrix& w, float* y,
                           int64_t y_stride, int64_t row_begin, int64_t row_end);
void int8_u8_dot_rows_vnni(const QuantizedActivations& xq, int64_t n_rows, const WeightMatrix& w, float* y,
                           int64_t y_stride, int64_t row_begin, int64_t row_end);

}  // namespace deepmoe
