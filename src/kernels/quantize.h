// Our own weight quantizers (the ggml block types are in ggml_blocks.h) and the uint8
// quantization of activations for W8A8. Formats are described in kernels/matmul.h and
// docs/quantization.md.
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/matmul.h"

namespace deepmoe {

// Values per nibble chunk of Int4 (the Q4_0 order: byte j holds value j low, j + 16 high).
constexpr int64_t kInt4Chunk = 32;

// Int8, per output channel, symmetric: scale = max|x| / 127, q = round(x / scale).
void quantize_int8_row(const float* x, int64_t n, int8_t* q, float* scale);
void dequantize_int8_row(const int8_t* q, int64_t n, float scale, float* y);

// Int4 in groups of `group` values (a multiple of 32) with an f16 scale each. Symmetric:
// scale = max|x| / 7, q = clamp(round(x / scale), −8, 7) + 8 (zero_points == nullptr).
// Asymmetric: scale = (max − min) / 15, zero = clamp(round(−min / scale), 0, 15),
// q = clamp(round(x / scale) + zero, 0, 15). The f16-rounded scale is the one divided by, so
// dequantization ((q − zero)·scale) reproduces exactly what was chosen.
void quantize_int4_row(const float* x, int64_t n, int64_t group, uint8_t* packed, uint16_t* scales,
                       uint8_t* zero_points);
void dequantize_int4_row(const uint8_t* packed, int64_t n, int64_t group, const uint16_t* scales,
                         const uint8_t* zero_points, float* y);

// A matrix quantized into owned buffers; view() is the WeightMatrix over them.
struct QuantizedMatrix {
  WeightFormat format = WeightFormat::Int8;
  int64_t rows = 0, cols = 0, group = 0;
  std::vector<uint8_t> values;         // ggml blocks, int8 or nibbles, rows contiguous
  std::vector<float> row_scales;       // Int8
  std::vector<int32_t> row_sums;       // Int8 (Σ q per row, for W8A8)
  std::vector<uint16_t> group_scales;  // Int4, f16
  std::vector<uint8_t> zero_points;    // Int4 asymmetric
  WeightMatrix view() const;
};
// w [rows, cols] f32 into `format` (Q8_0, Q4_0, Int8, Int4 with `group` and `asymmetric`).
// Q8_0, Q4_0 and Int4 need cols to be a multiple of 32 (Int4: of group); throws otherwise.
QuantizedMatrix quantize_matrix(const float* w, int64_t rows, int64_t cols, WeightFormat format, int64_t group = 0,
                                bool asymmetric = false);

// The uint8 scale and zero point that cover [min, max] (always including 0, so 0 is exact).
struct Uint8Range {
  float scale = 1.0f;
  int32_t zero_point = 0;
};
Uint8Range uint8_range(float min, float max);

// Activations as uint8 for W8A8: rows of `stride` bytes (cols rounded up to 64, the tail zero),
// each with its scale and zero point (all equal under static quantization).
struct QuantizedActivations {
  std::vector<uint8_t> values;
  int64_t stride = 0;
  std::vector<float> scale;
  std::vector<int32_t> zero_point;
};
// Dynamic (range == nullptr): each row from its own min and max. Static: the given range.
void quantize_activations(const float* x, int64_t n_rows, int64_t x_stride, int64_t cols, const Uint8Range* range,
                          QuantizedActivations& out);
// Back to f32 ((q − zero)·scale), packed [n_rows, cols]: the exact values the W8A8 product sees.
void dequantize_activations(const QuantizedActivations& xq, int64_t n_rows, int64_t cols, float* out);

}  // namespace deepmoe
