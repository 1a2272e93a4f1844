// y = x · Wᵀ, the one matrix product of the model. Weights keep the HuggingFace layout
// [out_features, in_features], row-major, in F32 or BF16 (read in place from the mmap'd file);
// activations are f32. Small M (decode) streams the weights once through our own SIMD kernel;
// larger M goes to OpenBLAS sgemm (BF16 weights are widened panel by panel first). F32 weights
// with M = 1 go to OpenBLAS sgemv, which measured faster than our kernel for f32. Threads come
// from our pool only; OpenBLAS runs single-threaded on each thread's slice.
#pragma once
#include <cstdint>
#include <string>

#include "core/dtype.h"
#include "core/thread_pool.h"

namespace deepmoe {

struct WeightMatrix {
  DType dtype = DType::F32;  // F32 or BF16
  const void* data = nullptr;
  int64_t rows = 0;  // out_features
  int64_t cols = 0;  // in_features
  // Rows [first, first + count) as their own matrix (rows are contiguous, so no copy).
  WeightMatrix row_slice(int64_t first, int64_t count) const;
  size_t bytes() const { return size_t(rows * cols) * dtype_size(dtype); }
};

// Largest M handled by the streaming kernel; above it, GEMM.
constexpr int64_t kSmallBatchMax = 4;

// y[m, :] = W · x[m, :] for m < n_rows. x rows are x_stride apart, y rows y_stride apart
// (defaults: packed). The pool splits the output features across threads.
void matmul(ThreadPool& pool, const float* x, int64_t n_rows, const WeightMatrix& w, float* y,
            int64_t x_stride = -1, int64_t y_stride = -1);

// matmul on output rows [row_begin, row_end) only, on the calling thread (for callers that
// parallelize at a coarser level, e.g. over attention heads).
void matmul_rows(const float* x, int64_t x_stride, int64_t n_rows, const WeightMatrix& w, float* y,
                 int64_t y_stride, int64_t row_begin, int64_t row_end);

// The streaming kernel on output rows [row_begin, row_end) only (exposed for tests and bench).
void matmul_small_batch(const float* x, int64_t x_stride, int64_t n_rows, const WeightMatrix& w,
                        float* y, int64_t y_stride, int64_t row_begin, int64_t row_end);

// Plain f32 GEMM on strided row-major matrices: C = alpha·op(A)·op(B) + beta·C, op = identity or
// transpose (training's backward passes need Aᵀ·B as well as A·Bᵀ).
void gemm_f32_ex(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                 int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// Plain f32 GEMM on strided row-major matrices (attention): C = A·B or A·Bᵀ, C = alpha·AB + beta·C.
void gemm_f32(bool transpose_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
              int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// "OpenBLAS <core>": the library and the CPU kernels it chose (OPENBLAS_CORETYPE overrides them).
std::string gemm_library_name();

// Makes the GEMM library run on the calling thread only (call once at setup; idempotent).
void use_single_threaded_blas();

}  // namespace deepmoe
