#include "kernels/quantize.h"

#include <algorithm>
#include <cmath>

#include "core/dtype.h"
#include "core/error.h"
#include "kernels/ggml_blocks.h"

namespace deepmoe {

void quantize_int8_row(const float* x, int64_t n, int8_t* q, float* scale) {
  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float s = amax / 127.0f;
  const float inverse = s != 0.0f ? 1.0f / s : 0.0f;
  for (int64_t i = 0; i < n; ++i) q[i] = int8_t(std::clamp(std::lround(x[i] * inverse), -127L, 127L));
  *scale = s;
}

void dequantize_int8_row(const int8_t* q, int64_t n, float scale, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = float(q[i]) * scale;
}

namespace {

// Element i of a 32-value chunk lives in byte i % 16, low nibble for i < 16.
inline void put_nibble(uint8_t* chunk, int64_t i, uint8_t q) {
  if (i < 16) chunk[i] = uint8_t((chunk[i] & 0xf0) | q);
  else chunk[i - 16] = uint8_t((chunk[i - 16] & 0x0f) | (q << 4));
}
inline int get_nibble(const uint8_t* chunk, int64_t i) { return i < 16 ? chunk[i] & 0x0f : chunk[i - 16] >> 4; }

}  // namespace

void quantize_int4_row(const float* x, int64_t n, int64_t group, uint8_t* packed, uint16_t* scales,
                       uint8_t* zero_points) {
  for (int64_t g = 0; g < n / group; ++g) {
    const float* v = x + g * group;
    float lo = 0.0f, hi = 0.0f, amax = 0.0f;
    for (int64_t i = 0; i < group; ++i) {
      lo = std::min(lo, v[i]);
      hi = std::max(hi, v[i]);
      amax = std::max(amax, std::fabs(v[i]));
    }
    const bool symmetric = zero_points == nullptr;
    scales[g] = f32_to_f16(symmetric ? amax / 7.0f : (hi - lo) / 15.0f);
    const float s = f16_to_f32(scales[g]);
    const float inverse = s != 0.0f ? 1.0f / s : 0.0f;
    long zero = 8;
    if (!symmetric) {
      zero = s != 0.0f ? std::clamp(std::lround(-lo * inverse), 0L, 15L) : 0;
      zero_points[g] = uint8_t(zero);
    }
    for (int64_t i = 0; i < group; ++i) {
      const int64_t col = g * group + i;
      const long q = std::clamp(std::lround(v[i] * inverse) + zero, 0L, 15L);
      put_nibble(packed + col / kInt4Chunk * 16, col % kInt4Chunk, uint8_t(q));
    }
  }
}

void dequantize_int4_row(const uint8_t* packed, int64_t n, int64_t group, const uint16_t* scales,
                         const uint8_t* zero_points, float* y) {
  for (int64_t col = 0; col < n; ++col) {
    const int64_t g = col / group;
    const int zero = zero_points ? zero_points[g] : 8;
    y[col] = float(get_nibble(packed + col / kInt4Chunk * 16, col % kInt4Chunk) - zero) * f16_to_f32(scales[g]);
  }
}

WeightMatrix QuantizedMatrix::view() const {
  WeightMatrix w;
  w.format = format;
  w.data = values.data();
  w.rows = rows;
  w.cols = cols;
  w.group = group;
  if (!row_scales.empty()) w.row_scales = row_scales.data();
  if (!row_sums.empty()) w.row_sums = row_sums.data();
  if (!group_scales.empty()) w.group_scales = group_scales.data();
  if (!zero_points.empty()) w.zero_points = zero_points.data();
  return w;
}

QuantizedMatrix quantize_matrix(const float* w, int64_t rows, int64_t cols, WeightFormat format, int64_t group,
                                bool asymmetric) {
  QuantizedMatrix q;
  q.format = format;
  q.rows = rows;
  q.cols = cols;
  const bool blocked = format == WeightFormat::Q8_0 || format == WeightFormat::Q4_0 || format == WeightFormat::Int4;
  if (blocked && cols % 32 != 0)
    fail("quantize: {} needs columns in multiples of 32, not {}", weight_format_name(format), cols);
  if (format == WeightFormat::Int4 && (group <= 0 || group % 32 != 0 || cols % group != 0))
    fail("quantize: Int4 groups of {} do not divide {} columns in multiples of 32", group, cols);
  q.values.resize(size_t(rows) * q.view().row_bytes());
  const size_t row_bytes = q.view().row_bytes();
  switch (format) {
    case WeightFormat::Q8_0: quantize_q8_0(w, rows * cols, q.values.data()); break;
    case WeightFormat::Q4_0: quantize_q4_0(w, rows * cols, q.values.data()); break;
    case WeightFormat::Int8:
      q.row_scales.resize(size_t(rows));
      q.row_sums.resize(size_t(rows));
      for (int64_t r = 0; r < rows; ++r) {
        auto* row = reinterpret_cast<int8_t*>(q.values.data() + size_t(r) * row_bytes);
        quantize_int8_row(w + r * cols, cols, row, &q.row_scales[size_t(r)]);
        int32_t sum = 0;
        for (int64_t k = 0; k < cols; ++k) sum += row[k];
        q.row_sums[size_t(r)] = sum;
      }
      break;
    case WeightFormat::Int4: {
      q.group = group;
      const int64_t groups = cols / group;
      q.group_scales.resize(size_t(rows * groups));
      if (asymmetric) q.zero_points.resize(size_t(rows * groups));
      for (int64_t r = 0; r < rows; ++r)
        quantize_int4_row(w + r * cols, cols, group, q.values.data() + size_t(r) * row_bytes,
                          q.group_scales.data() + r * groups, asymmetric ? q.zero_points.data() + r * groups : nullptr);
      break;
    }
    default: fail("quantize: {} is not a quantized format", weight_format_name(format));
  }
  return q;
}

Uint8Range uint8_range(float min, float max) {
  min = std::min(min, 0.0f);
  max = std::max(max, 0.0f);
  Uint8Range range;
  if (max - min <= 0.0f || !std::isfinite(max - min)) return range;
  range.scale = (max - min) / 255.0f;
  range.zero_point = int32_t(std::clamp(std::lround(-min / range.scale), 0L, 255L));
  return range;
}

void quantize_activations(const float* x, int64_t n_rows, int64_t x_stride, int64_t cols, const Uint8Range* range,
                          QuantizedActivations& out) {
  out.stride = (cols + 63) / 64 * 64;
  out.values.assign(size_t(n_rows * out.stride), 0);
  out.scale.resize(size_t(n_rows));
  out.zero_point.resize(size_t(n_rows));
  for (int64_t m = 0; m < n_rows; ++m) {
    const float* row = x + m * x_stride;
    Uint8Range r;
    if (range) {
      r = *range;
    } else {
      float lo = 0.0f, hi = 0.0f;
      for (int64_t k = 0; k < cols; ++k) {
        lo = std::min(lo, row[k]);
        hi = std::max(hi, row[k]);
      }
      r = uint8_range(lo, hi);
    }
    const float inverse = 1.0f / r.scale;
    uint8_t* q = out.values.data() + m * out.stride;
    for (int64_t k = 0; k < cols; ++k)
      q[k] = uint8_t(std::clamp(std::lround(row[k] * inverse) + r.zero_point, 0L, 255L));
    out.scale[size_t(m)] = r.scale;
    out.zero_point[size_t(m)] = r.zero_point;
  }
}

void dequantize_activations(const QuantizedActivations& xq, int64_t n_rows, int64_t cols, float* out) {
  for (int64_t m = 0; m < n_rows; ++m) {
    const uint8_t* q = xq.values.data() + m * xq.stride;
    for (int64_t k = 0; k < cols; ++k)
      out[m * cols + k] = float(int32_t(q[k]) - xq.zero_point[size_t(m)]) * xq.scale[size_t(m)];
  }
}

}  // namespace deepmoe
