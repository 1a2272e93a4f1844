// What a WeightMatrix is made of: row sizes, slices and dequantization for every format.
#include <cstring>

#include "core/dtype.h"
#include "core/error.h"
#include "kernels/ggml_blocks.h"
#include "kernels/matmul.h"
#include "kernels/quantize.h"

namespace deepmoe {

std::string_view weight_format_name(WeightFormat format) {
  switch (format) {
    case WeightFormat::F32: return "F32";
    case WeightFormat::BF16: return "BF16";
    case WeightFormat::Q8_0: return "Q8_0";
    case WeightFormat::Q4_0: return "Q4_0";
    case WeightFormat::Int8: return "Int8";
    case WeightFormat::Int4: return "Int4";
  }
  return "?";
}

size_t WeightMatrix::row_bytes() const {
  switch (format) {
    case WeightFormat::F32: return size_t(cols) * 4;
    case WeightFormat::BF16: return size_t(cols) * 2;
    case WeightFormat::Q8_0: return size_t(cols / kGgmlBlock * kQ8_0BlockBytes);
    case WeightFormat::Q4_0: return size_t(cols / kGgmlBlock * kQ4_0BlockBytes);
    case WeightFormat::Int8: return size_t(cols);
    case WeightFormat::Int4: return size_t(cols / 2);
  }
  return 0;
}

WeightMatrix WeightMatrix::row_slice(int64_t first, int64_t count) const {
  WeightMatrix slice = *this;
  slice.data = static_cast<const uint8_t*>(data) + size_t(first) * row_bytes();
  slice.rows = count;
  if (row_scales) slice.row_scales = row_scales + first;
  if (row_sums) slice.row_sums = row_sums + first;
  if (group_scales) slice.group_scales = group_scales + first * groups_per_row();
  if (zero_points) slice.zero_points = zero_points + first * groups_per_row();
  return slice;
}

size_t WeightMatrix::bytes() const {
  size_t total = size_t(rows) * row_bytes();
  if (row_scales) total += size_t(rows) * sizeof(float);
  if (group_scales) total += size_t(rows * groups_per_row()) * sizeof(uint16_t);
  if (zero_points) total += size_t(rows * groups_per_row());
  return total;
}

void dequantize_rows(const WeightMatrix& w, int64_t first, int64_t count, float* out) {
  const WeightMatrix part = w.row_slice(first, count);
  const int64_t n = count * w.cols;
  switch (w.format) {
    case WeightFormat::F32: std::memcpy(out, part.data, size_t(n) * 4); return;
    case WeightFormat::BF16: convert_to_f32(DType::BF16, part.data, out, size_t(n)); return;
    case WeightFormat::Q8_0: dequantize_q8_0(static_cast<const uint8_t*>(part.data), n, out); return;
    case WeightFormat::Q4_0: dequantize_q4_0(static_cast<const uint8_t*>(part.data), n, out); return;
    case WeightFormat::Int8:
      for (int64_t r = 0; r < count; ++r)
        dequantize_int8_row(static_cast<const int8_t*>(part.data) + r * w.cols, w.cols, part.row_scales[r],
                            out + r * w.cols);
      return;
    case WeightFormat::Int4:
      for (int64_t r = 0; r < count; ++r)
        dequantize_int4_row(static_cast<const uint8_t*>(part.data) + r * w.cols / 2, w.cols, w.group,
                            part.group_scales + r * w.groups_per_row(),
                            part.zero_points ? part.zero_points + r * w.groups_per_row() : nullptr, out + r * w.cols);
      return;
  }
  fail("dequantize_rows: unknown weight format");
}

}  // namespace deepmoe
