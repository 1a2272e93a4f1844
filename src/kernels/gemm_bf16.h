// Mixed-precision GEMM for training: bf16 operands, f32 accumulation and f32 output, on
// oneDNN's JIT kernels (vdpbf16ps on CPUs with AVX512-BF16: about 2.2x OpenBLAS sgemm on the
// training shapes, docs/benchmarks.md). Row-major, strided, like gemm_f32_ex.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace deepmoe {

// Whether the CPU runs bf16 products natively (AVX512-BF16). Without it, training's
// --precision bf16 falls back to f32: emulated bf16 would be slower than f32, not faster.
bool cpu_has_bf16_gemm();

// C = op(A)·op(B) (+ C when accumulate); A, B bf16 bit patterns, C f32. Runs on the calling
// thread only (callers split the work over their pool, as with gemm_f32_ex).
void gemm_bf16(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, const uint16_t* a, int64_t lda,
               const uint16_t* b, int64_t ldb, bool accumulate, float* c, int64_t ldc);

// dst[i] = bf16(src[i]), rounding to nearest even (NaN stays NaN), as PyTorch's .bfloat16().
void convert_f32_to_bf16(const float* src, uint16_t* dst, size_t n);

}  // namespace deepmoe
