// y = x · Wᵀ, the one matrix product of the model. Weights keep the HuggingFace layout
// [out_features, in_features], row-major, in F32, BF16 or a quantized format (read in place from
// the mmap'd file); activations are f32. Small M (decode) streams the weights once through our
// own SIMD kernels; larger M goes to OpenBLAS sgemm (other formats are widened panel by panel),
// except Q8_0/Q4_0 with AVX-512 VNNI, which run our integer GEMM (matmul_ggml_gemm.h). F32 weights
// with M = 1 go to OpenBLAS sgemv, which measured faster than our kernel for f32. In the server's
// batch-invariant mode rows go through the streaming kernels in groups of kSmallBatchMax (never
// sgemv or a GEMM, whose rounding depends on M). Training's bf16 precision multiplies BF16 weights
// with oneDNN's bf16 GEMM. The choice is made in one place (matmul.cpp, choose_kernel) from the
// format, the row count, the Context and the CPU. Threads come from the context's pool only;
// OpenBLAS runs single-threaded on each thread's slice.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "kernels/context.h"

namespace deepmoe {

// How a weight matrix is stored. Quantized formats keep rows contiguous so a row range is a
// slice; the layouts are documented in docs/quantization.md.
enum class WeightFormat : uint8_t {
  F32,
  BF16,
  Q8_0,  // ggml blocks of 32: f16 scale d + 32 int8 q; value = q·d
  Q4_0,  // ggml blocks of 32: f16 scale d + 16 bytes of nibbles; value = (q − 8)·d
  Int8,  // int8 [rows, cols] + one f32 scale per row (W8A16; W8A8 with activation_quant)
  Int4,  // nibbles [rows, cols/2] in Q4_0's 32-value order + f16 scale (+ u8 zero point) per group
};

std::string_view weight_format_name(WeightFormat format);

// W8A8: activations are quantized to uint8, asymmetric, before an Int8 product: per tensor with
// a scale and zero point from calibration (Static), or per token from its own range (Dynamic).
enum class ActivationQuant : uint8_t { None, Static, Dynamic };

struct WeightMatrix {
  WeightFormat format = WeightFormat::F32;
  const void* data = nullptr;
  int64_t rows = 0;                        // out_features
  int64_t cols = 0;                        // in_features
  const float* row_scales = nullptr;       // Int8: [rows]
  const int32_t* row_sums = nullptr;       // Int8 with activation_quant: Σ q per row (zero-point term)
  const uint16_t* group_scales = nullptr;  // Int4: f16 [rows, cols / group]
  const uint8_t* zero_points = nullptr;    // Int4: [rows, cols / group]; nullptr: symmetric (8)
  int64_t group = 0;                       // Int4: values per scale (a multiple of 32)
  ActivationQuant activation_quant = ActivationQuant::None;
  float activation_scale = 0.0f;  // Static
  int32_t activation_zero_point = 0;

  bool is_quantized() const { return format != WeightFormat::F32 && format != WeightFormat::BF16; }
  int64_t groups_per_row() const { return format == WeightFormat::Int4 ? cols / group : 0; }
  // Bytes of one row of `data`.
  size_t row_bytes() const;
  // Rows [first, first + count) as their own matrix (rows are contiguous, so no copy).
  WeightMatrix row_slice(int64_t first, int64_t count) const;
  // Every byte the matrix is made of (values, scales, zero points).
  size_t bytes() const;
};

// Rows [first, first + count) of w as f32 (the dequantized values), count·cols floats.
void dequantize_rows(const WeightMatrix& w, int64_t first, int64_t count, float* out);

// Largest M handled by the streaming kernel; above it, GEMM.
constexpr int64_t kSmallBatchMax = 4;

// y[m, :] = W · x[m, :] for m < n_rows. x rows are x_stride apart, y rows y_stride apart
// (defaults: packed). The pool splits the output features across threads.
void matmul(const Context& ctx, const float* x, int64_t n_rows, const WeightMatrix& w, float* y, int64_t x_stride = -1,
            int64_t y_stride = -1);

// One product of a batch: y[m, :] = W · x[m, :] for m < n_rows (strides as matmul's).
struct MatmulJob {
  const float* x = nullptr;
  int64_t n_rows = 0;
  const WeightMatrix* w = nullptr;
  float* y = nullptr;
  int64_t x_stride = -1, y_stride = -1;
};

// Independent products in one parallel region: the decode step's routed experts run as one
// wake-up of the pool instead of one per matrix. Each job is split into the same row blocks as
// matmul() would use, so results equal running the jobs one by one.
void matmul_batch(const Context& ctx, std::span<const MatmulJob> jobs);

// matmul on output rows [row_begin, row_end) only, on the calling thread (for callers that
// parallelize at a coarser level, e.g. over attention heads); ctx gives the settings only.
void matmul_rows(const Context& ctx, const float* x, int64_t x_stride, int64_t n_rows, const WeightMatrix& w, float* y,
                 int64_t y_stride, int64_t row_begin, int64_t row_end);

// The streaming kernel on output rows [row_begin, row_end) only (exposed for tests and bench).
void matmul_small_batch(const float* x, int64_t x_stride, int64_t n_rows, const WeightMatrix& w, float* y,
                        int64_t y_stride, int64_t row_begin, int64_t row_end);

// Plain f32 GEMM on strided row-major matrices: C = alpha·op(A)·op(B) + beta·C, op = identity or
// transpose (training's backward passes need Aᵀ·B as well as A·Bᵀ).
void gemm_f32_ex(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                 int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// Plain f32 GEMM on strided row-major matrices (attention): C = A·B or A·Bᵀ, C = alpha·AB + beta·C.
void gemm_f32(bool transpose_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
              const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// "OpenBLAS <core>": the library and the CPU kernels it chose (OPENBLAS_CORETYPE overrides them).
std::string gemm_library_name();

// Makes the GEMM library run on the calling thread only (call once at setup; idempotent).
void use_single_threaded_blas();

}  // namespace deepmoe
