// Storage types of weights and their conversions to f32. Arithmetic is always f32;
// bf16, f16 and fp8 are only how numbers are stored.
#pragma once
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace deepmoe {

// Q8_0 and Q4_0 are ggml's blocks of 32 values (GGUF tensors only; a shape counts values and
// dtype_size is 0): see kernels/ggml_blocks.h.
enum class DType { F32, F16, BF16, F8_E4M3, I32, I64, I8, U8, Q8_0, Q4_0 };

// Name as the safetensors header spells it ("F32", "BF16", "F8_E4M3", ...).
std::string_view dtype_name(DType dtype);
// Parses a safetensors dtype name; returns false for names we do not support.
bool parse_dtype(std::string_view name, DType* out);
size_t dtype_size(DType dtype);
// Bytes of n values (n a multiple of 32 for the block types).
size_t dtype_bytes(DType dtype, int64_t n);

inline float bf16_to_f32(uint16_t bits) { return std::bit_cast<float>(uint32_t(bits) << 16); }

// Round to nearest even, as PyTorch does; NaN stays NaN.
inline uint16_t f32_to_bf16(float value) {
  uint32_t bits = std::bit_cast<uint32_t>(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return uint16_t((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return uint16_t(bits >> 16);
}

float f16_to_f32(uint16_t bits);
// IEEE binary16, round to nearest even (as F16C's vcvtps2ph and numpy), overflow to infinity,
// NaN stays NaN.
uint16_t f32_to_f16(float value);
// OCP e4m3fn (as DeepSeek-V3 ships): bias 7, no infinities, 0x7f/0xff are NaN.
float fp8_e4m3_to_f32(uint8_t bits);

// Converts n values of `dtype` at `src` to f32 (F32, F16, BF16, F8_E4M3).
void convert_to_f32(DType dtype, const void* src, float* dst, size_t n);

}  // namespace deepmoe
