#include "kernels/linear_backward.h"

#include <vector>

#include "core/error.h"
#include "kernels/gemm_bf16.h"

namespace deepmoe {

namespace {

// Rows per GEMM block: big enough for BLAS efficiency, small enough to balance two threads; the
// blocks are fixed, so results do not depend on the thread count.
constexpr int64_t kRowBlock = 64;

// rows × cols f32 (rows `stride` apart) → packed bf16 in `out`, split over the pool.
const uint16_t* to_bf16(const Context& ctx, const float* x, int64_t stride, int64_t rows, int64_t cols,
                        std::vector<uint16_t>& out) {
  out.resize(size_t(rows * cols));
  ctx.pool().parallel_for(rows, kRowBlock, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) convert_f32_to_bf16(x + r * stride, out.data() + r * cols, size_t(cols));
  });
  return out.data();
}

void backward_bf16(const Context& ctx, const float* x, int64_t x_stride, const float* dy, int64_t n,
                   const WeightMatrix& w, float* dx, float* dw) {
  const int64_t out = w.rows, in = w.cols;
  std::vector<uint16_t> dyb_buffer, xb_buffer;
  const uint16_t* dyb = to_bf16(ctx, dy, out, n, out, dyb_buffer);
  const uint16_t* xb = to_bf16(ctx, x, x_stride, n, in, xb_buffer);
  if (dx != nullptr) {
    const uint16_t* wb = static_cast<const uint16_t*>(w.data);
    ctx.pool().parallel_for(n, kRowBlock, [&](int64_t begin, int64_t end) {
      gemm_bf16(false, false, end - begin, in, out, dyb + begin * out, out, wb, in, true, dx + begin * in, in);
    });
  }
  ctx.pool().parallel_for(out, kRowBlock, [&](int64_t begin, int64_t end) {
    gemm_bf16(true, false, end - begin, in, n, dyb + begin, out, xb, in, true, dw + begin * in, in);
  });
}

}  // namespace

void linear_backward(const Context& ctx, const float* x, int64_t x_stride, const float* dy, int64_t n,
                     const WeightMatrix& w, float* dx, float* dw) {
  const int64_t out = w.rows, in = w.cols;
  if (x_stride < 0) x_stride = in;
  // As the forward pass multiplied (matmul's kernel choice): bf16 weights in bf16, f32 ones in f32.
  if (ctx.precision() == GemmPrecision::BF16 && w.format == WeightFormat::BF16)
    return backward_bf16(ctx, x, x_stride, dy, n, w, dx, dw);
  if (w.format != WeightFormat::F32)
    fail("linear_backward: {} weights outside bf16 precision", weight_format_name(w.format));
  const float* weights = static_cast<const float*>(w.data);
  if (dx != nullptr)
    ctx.pool().parallel_for(n, kRowBlock, [&](int64_t begin, int64_t end) {
      gemm_f32_ex(false, false, end - begin, in, out, 1.0f, dy + begin * out, out, weights, in, 1.0f, dx + begin * in,
                  in);
    });
  // dW rows are independent: each block owns output features [begin, end).
  ctx.pool().parallel_for(out, kRowBlock, [&](int64_t begin, int64_t end) {
    gemm_f32_ex(true, false, end - begin, in, n, 1.0f, dy + begin, out, x, x_stride, 1.0f, dw + begin * in, in);
  });
}

}  // namespace deepmoe
