// Portable decode kernels for quantized weights (see matmul_quant.h). Written so GCC vectorizes
// them: a 32-value chunk is widened into a float array, then 32-lane accumulators take it.
#include "kernels/matmul_quant.h"

#include <atomic>
#include <cstring>

#include "core/dtype.h"
#include "core/error.h"
#include "kernels/ggml_blocks.h"
#include "kernels/matmul_small_batch_avx512.h"

namespace deepmoe {

namespace {

constexpr int64_t kChunk = 32;

inline float load_f16(const void* p) {
  uint16_t bits;
  std::memcpy(&bits, p, 2);
  return f16_to_f32(bits);
}

// Chunk c of row `row` widened to 32 floats, (q − zero)·scale. Int8 leaves the scale to the
// caller (one per row).
template <WeightFormat F>
inline void widen_chunk(const WeightMatrix& w, int64_t row, int64_t c, float* out) {
  const auto* base = static_cast<const uint8_t*>(w.data);
  if constexpr (F == WeightFormat::Q8_0) {
    const uint8_t* block = base + size_t(row) * w.row_bytes() + size_t(c * kQ8_0BlockBytes);
    const float d = load_f16(block);
    for (int j = 0; j < kChunk; ++j) out[j] = float(int8_t(block[2 + j])) * d;
  } else if constexpr (F == WeightFormat::Int8) {
    const auto* q = reinterpret_cast<const int8_t*>(base + row * w.cols + c * kChunk);
    for (int j = 0; j < kChunk; ++j) out[j] = float(q[j]);
  } else {
    const uint8_t* q;
    float d;
    int zero = 8;
    if constexpr (F == WeightFormat::Q4_0) {
      const uint8_t* block = base + size_t(row) * w.row_bytes() + size_t(c * kQ4_0BlockBytes);
      d = load_f16(block);
      q = block + 2;
    } else {
      const int64_t g = row * w.groups_per_row() + c * kChunk / w.group;
      d = f16_to_f32(w.group_scales[g]);
      if (w.zero_points) zero = w.zero_points[g];
      q = base + row * (w.cols / 2) + c * 16;
    }
    for (int j = 0; j < 16; ++j) {
      out[j] = float(int(q[j] & 0x0f) - zero) * d;
      out[j + 16] = float(int(q[j] >> 4) - zero) * d;
    }
  }
}

template <int M, WeightFormat F>
inline void dot_rows(const float* x, int64_t x_stride, const WeightMatrix& w, float* y, int64_t y_stride,
                     int64_t row_begin, int64_t row_end) {
  const int64_t chunks = w.cols / kChunk;
  for (int64_t row = row_begin; row < row_end; ++row) {
    float acc[M][kChunk] = {};
    for (int64_t c = 0; c < chunks; ++c) {
      float wv[kChunk];
      widen_chunk<F>(w, row, c, wv);
      for (int m = 0; m < M; ++m)
        for (int j = 0; j < kChunk; ++j) acc[m][j] += x[m * x_stride + c * kChunk + j] * wv[j];
    }
    for (int m = 0; m < M; ++m) {
      float sum = 0.0f;
      for (int j = 0; j < kChunk; ++j) sum += acc[m][j];
      if constexpr (F == WeightFormat::Int8) {
        const auto* q = static_cast<const int8_t*>(w.data) + row * w.cols;
        for (int64_t k = chunks * kChunk; k < w.cols; ++k) sum += x[m * x_stride + k] * float(q[k]);
        sum *= w.row_scales[row];
      }
      y[m * y_stride + row] = sum;
    }
  }
}

template <WeightFormat F>
inline void dot_rows_any_m(const float* x, int64_t x_stride, int64_t n_rows, const WeightMatrix& w, float* y,
                           int64_t y_stride, int64_t row_begin, int64_t row_end) {
  switch (n_rows) {
    case 1: return dot_rows<1, F>(x, x_stride, w, y, y_stride, row_begin, row_end);
    case 2: return dot_rows<2, F>(x, x_stride, w, y, y_stride, row_begin, row_end);
    case 3: return dot_rows<3, F>(x, x_stride, w, y, y_stride, row_begin, row_end);
    default: return dot_rows<4, F>(x, x_stride, w, y, y_stride, row_begin, row_end);
  }
}

__attribute__((target_clones("avx2", "default"))) void portable_quant_dot_rows(const float* x, int64_t x_stride,
                                                                               int64_t n_rows, const WeightMatrix& w,
                                                                               float* y, int64_t y_stride,
                                                                               int64_t row_begin, int64_t row_end) {
  switch (w.format) {
    case WeightFormat::Q8_0:
      return dot_rows_any_m<WeightFormat::Q8_0>(x, x_stride, n_rows, w, y, y_stride, row_begin, row_end);
    case WeightFormat::Q4_0:
      return dot_rows_any_m<WeightFormat::Q4_0>(x, x_stride, n_rows, w, y, y_stride, row_begin, row_end);
    case WeightFormat::Int8:
      return dot_rows_any_m<WeightFormat::Int8>(x, x_stride, n_rows, w, y, y_stride, row_begin, row_end);
    case WeightFormat::Int4:
      return dot_rows_any_m<WeightFormat::Int4>(x, x_stride, n_rows, w, y, y_stride, row_begin, row_end);
    default: return;
  }
}

__attribute__((target_clones("avx2", "default"))) void portable_int8_u8_dot_rows(const QuantizedActivations& xq,
                                                                                 int64_t n_rows, const WeightMatrix& w,
                                                                                 float* y, int64_t y_stride,
                                                                                 int64_t row_begin, int64_t row_end) {
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int8_t* q = static_cast<const int8_t*>(w.data) + row * w.cols;
    for (int64_t m = 0; m < n_rows; ++m) {
      const uint8_t* a = xq.values.data() + m * xq.stride;
      int32_t dot = 0;
      for (int64_t k = 0; k < w.cols; ++k) dot += int32_t(a[k]) * int32_t(q[k]);
      const int32_t centered = dot - xq.zero_point[size_t(m)] * w.row_sums[row];
      y[m * y_stride + row] = float(centered) * xq.scale[size_t(m)] * w.row_scales[row];
    }
  }
}

}  // namespace

void quant_dot_rows(const float* x, int64_t x_stride, int64_t n_rows, const WeightMatrix& w, float* y, int64_t y_stride,
                    int64_t row_begin, int64_t row_end, bool portable) {
  if (n_rows < 1 || n_rows > kSmallBatchMax) fail("quant_dot_rows: {} rows", n_rows);
  if (!w.is_quantized()) fail("quant_dot_rows: {} weights are not quantized", weight_format_name(w.format));
  if (!portable && cpu_has_avx512())
    return quant_dot_rows_avx512(x, x_stride, n_rows, w, y, y_stride, row_begin, row_end);
  portable_quant_dot_rows(x, x_stride, n_rows, w, y, y_stride, row_begin, row_end);
}

void int8_u8_dot_rows(const QuantizedActivations& xq, int64_t n_rows, const WeightMatrix& w, float* y, int64_t y_stride,
                      int64_t row_begin, int64_t row_end, bool portable) {
  if (w.format != WeightFormat::Int8 || !w.row_sums) fail("int8_u8_dot_rows: needs Int8 weights with row sums");
  if (!portable && cpu_has_avx512_vnni()) return int8_u8_dot_rows_vnni(xq, n_rows, w, y, y_stride, row_begin, row_end);
  portable_int8_u8_dot_rows(xq, n_rows, w, y, y_stride, row_begin, row_end);
}

}  // namespace deepmoe
