// The batch-invariant product for f32 and bf16 weights (the server's mode, matmul.h): each output
// accumulates x[k]·w[k] along k by FMA in four interleaved partial sums (k mod 4), added as
// (s0 + s1) + (s2 + s3) — an order that depends on nothing but k, so a row's result is the
// same whatever other rows share the call. Weights are repacked once (per matrix, on first use)
// into panels of 16 output features, k-major, so the kernel broadcasts activations against whole
// vectors of weights: no horizontal sums (the dot-product kernels spend their time there on the
// short rows of small models), one weight load per 4 rows' FMAs. The portable path computes the
// same sums with std::fma, so results agree bit for bit with or without AVX-512. BF16 weights stay
// BF16 in their panels (widened in registers by a shift, exact): half the bytes every step reads.
#pragma once
#include <cstdint>

#include "core/aligned_vector.h"
#include "kernels/matmul.h"

namespace deepmoe {

struct PackedPanels {
  int64_t rows = 0, cols = 0;
  // [ceil(rows / 16)][cols][16], rows past the end zero: BF16 weights in `halves` (bf16 bits), every
  // other format widened to f32 in `values`. One of the two is empty.
  AlignedVector<float> values;
  AlignedVector<uint16_t> halves;
};

// w's panels, packed on first use and kept for the process's life (keyed by w's data). Thread-safe.
const PackedPanels& packed_panels(const WeightMatrix& w);

// y[m, r] = Σ_k x[m, k] · w[r, k] for m < n_rows (at most kSmallBatchMax), r in [row_begin, row_end).
void matmul_invariant_f32(const float* x, int64_t x_stride, int64_t n_rows, const PackedPanels& w, float* y,
                          int64_t y_stride, int64_t row_begin, int64_t row_end);

// The portable kernel (tests compare the two).
void matmul_invariant_f32_portable(const float* x, int64_t x_stride, int64_t n_rows, const PackedPanels& w, float* y,
                                   int64_t y_stride, int64_t row_begin, int64_t row_end);

}  // namespace deepmoe
