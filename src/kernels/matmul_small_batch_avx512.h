// The AVX-512 decode kernel, chosen at run time when the CPU has AVX-512 F/BW/VL.
#pragma once
#include <cstdint>

namespace deepmoe {

bool cpu_has_avx512();
// y[m, row] = x[m, :] · w[row, :] for m < n_rows (1..4), rows [row_begin, row_end).
void dot_rows_avx512(const float* x, int64_t x_stride, int64_t n_rows, const float* w, int64_t cols, float* y,
                     int64_t y_stride, int64_t row_begin, int64_t row_end);
void dot_rows_avx512(const float* x, int64_t x_stride, int64_t n_rows, const uint16_t* w, int64_t cols, float* y,
                     int64_t y_stride, int64_t row_begin, int64_t row_end);

}  // namespace deepmoe
