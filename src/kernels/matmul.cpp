#include "kernels/matmul.h"

#include <cblas.h>

#include <algorithm>
#include <vector>

#include "core/error.h"

namespace deepmoe {

WeightMatrix WeightMatrix::row_slice(int64_t first, int64_t count) const {
  WeightMatrix slice = *this;
  slice.data = static_cast<const uint8_t*>(data) + size_t(first * cols) * dtype_size(dtype);
  slice.rows = count;
  return slice;
}

void set_gemm_threads(int n_threads) { openblas_set_num_threads(std::max(1, n_threads)); }

void gemm_f32(bool transpose_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
              int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, transpose_b ? CblasTrans : CblasNoTrans, blasint(m),
              blasint(n), blasint(k), alpha, a, blasint(lda), b, blasint(ldb), beta, c, blasint(ldc));
}

namespace {

// Rows of a BF16 weight widened to f32 per sgemm call: big enough to keep sgemm efficient,
// small enough (a few MB) to stay in cache-friendly scratch.
constexpr int64_t kPanelRows = 512;

void matmul_bf16_panels(ThreadPool& pool, const float* x, int64_t x_stride, int64_t n_rows,
                        const WeightMatrix& w, float* y, int64_t y_stride) {
  thread_local std::vector<float> panel_storage;
  panel_storage.resize(size_t(std::min(kPanelRows, w.rows) * w.cols));
  // A plain pointer: inside the lambda a thread_local name would mean each worker's own copy.
  float* panel = panel_storage.data();
  const auto* bits = static_cast<const uint16_t*>(w.data);
  for (int64_t first = 0; first < w.rows; first += kPanelRows) {
    const int64_t count = std::min(kPanelRows, w.rows - first);
    const uint16_t* source = bits + first * w.cols;
    pool.parallel_for(count * w.cols, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) panel[i] = bf16_to_f32(source[i]);
    });
    gemm_f32(true, n_rows, count, w.cols, 1.0f, x, x_stride, panel, w.cols, 0.0f, y + first,
             y_stride);
  }
}

}  // namespace

void matmul(ThreadPool& pool, const float* x, int64_t n_rows, const WeightMatrix& w, float* y,
            int64_t x_stride, int64_t y_stride) {
  if (x_stride < 0) x_stride = w.cols;
  if (y_stride < 0) y_stride = w.rows;
  if (n_rows == 0 || w.rows == 0) return;
  if (n_rows == 1 && w.dtype == DType::F32) {
    // Measured (docs/benchmarks.md): OpenBLAS sgemv streams f32 weights faster than our kernel.
    cblas_sgemv(CblasRowMajor, CblasNoTrans, blasint(w.rows), blasint(w.cols), 1.0f, static_cast<const float*>(w.data),
                blasint(w.cols), x, 1, 0.0f, y, 1);
    return;
  }
  if (n_rows <= kSmallBatchMax) {
    // Split output rows in blocks of 16 so each thread streams its own slice of W.
    pool.parallel_for(w.rows, 16, [&](int64_t begin, int64_t end) {
      matmul_small_batch(x, x_stride, n_rows, w, y, y_stride, begin, end);
    });
    return;
  }
  switch (w.dtype) {
    case DType::F32:
      gemm_f32(true, n_rows, w.rows, w.cols, 1.0f, x, x_stride, static_cast<const float*>(w.data),
               w.cols, 0.0f, y, y_stride);
      return;
    case DType::BF16:
      matmul_bf16_panels(pool, x, x_stride, n_rows, w, y, y_stride);
      return;
    default:
      fail("matmul: weights of dtype {} are not supported", dtype_name(w.dtype));
  }
}

}  // namespace deepmoe
