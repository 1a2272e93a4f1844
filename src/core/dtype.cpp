#include "core/dtype.h"

#include <cmath>

#include "core/error.h"

namespace deepmoe {

std::string_view dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::F8_E4M3: return "F8_E4M3";
    case DType::I32: return "I32";
    case DType::I64: return "I64";
    case DType::I8: return "I8";
    case DType::U8: return "U8";
    case DType::Q8_0: return "Q8_0";
    case DType::Q4_0: return "Q4_0";
  }
  return "?";
}

bool parse_dtype(std::string_view name, DType* out) {
  static constexpr struct {
    std::string_view name;
    DType dtype;
  } kNames[] = {{"F32", DType::F32}, {"F16", DType::F16}, {"BF16", DType::BF16}, {"F8_E4M3", DType::F8_E4M3},
                {"I32", DType::I32}, {"I64", DType::I64}, {"I8", DType::I8},     {"U8", DType::U8}};
  for (const auto& entry : kNames) {
    if (entry.name == name) {
      *out = entry.dtype;
      return true;
    }
  }
  return false;
}

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::F32: return 4;
    case DType::F16: return 2;
    case DType::BF16: return 2;
    case DType::F8_E4M3: return 1;
    case DType::I32: return 4;
    case DType::I64: return 8;
    case DType::I8: return 1;
    case DType::U8: return 1;
    case DType::Q8_0: return 0;
    case DType::Q4_0: return 0;
  }
  return 0;
}

size_t dtype_bytes(DType dtype, int64_t n) {
  if (dtype == DType::Q8_0) return size_t(n / 32 * 34);
  if (dtype == DType::Q4_0) return size_t(n / 32 * 18);
  return size_t(n) * dtype_size(dtype);
}

float f16_to_f32(uint16_t bits) {
  const uint32_t sign = uint32_t(bits >> 15) << 31;
  const uint32_t exponent = (bits >> 10) & 0x1f;
  const uint32_t mantissa = bits & 0x3ff;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24
    const float magnitude = std::ldexp(float(mantissa), -24);
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
  return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

uint16_t f32_to_f16(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  const uint16_t sign = uint16_t((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return uint16_t(sign | 0x7e00u | ((magnitude >> 13) & 0x3ffu));  // NaN
  if (magnitude >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds past 65504: infinity
  if (magnitude < 0x38800000u) {  // below 2^-14: a subnormal half (or zero), in units of 2^-24
    const float scaled = std::bit_cast<float>(magnitude) * 16777216.0f;  // exact: a power of two
    return uint16_t(sign | uint16_t(std::nearbyint(scaled)));            // default rounding: to nearest even
  }
  // Normal: rebias the exponent (127 → 15) and round the 23-bit mantissa to 10 bits, ties to even;
  // a carry out of the mantissa correctly bumps the exponent.
  const uint32_t rebased = magnitude - (uint32_t(127 - 15) << 23);
  const uint32_t rounded = rebased + 0xfffu + ((rebased >> 13) & 1u);
  return uint16_t(sign | uint16_t(rounded >> 13));
}

float fp8_e4m3_to_f32(uint8_t bits) {
  const bool negative = bits & 0x80;
  const int exponent = (bits >> 3) & 0xf;
  const int mantissa = bits & 0x7;
  float magnitude;
  if (exponent == 0xf && mantissa == 0x7) {
    magnitude = NAN;
  } else if (exponent == 0) {
    magnitude = std::ldexp(float(mantissa), -9);  // subnormal: m/8 * 2^-6
  } else {
    magnitude = std::ldexp(1.0f + float(mantissa) / 8.0f, exponent - 7);
  }
  return negative ? -magnitude : magnitude;
}

void convert_to_f32(DType dtype, const void* src, float* dst, size_t n) {
  switch (dtype) {
    case DType::F32: std::memcpy(dst, src, n * sizeof(float)); return;
    case DType::BF16: {
      const auto* in = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(in[i]);
      return;
    }
    case DType::F16: {
      const auto* in = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = f16_to_f32(in[i]);
      return;
    }
    case DType::F8_E4M3: {
      const auto* in = static_cast<const uint8_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = fp8_e4m3_to_f32(in[i]);
      return;
    }
    default: fail("cannot convert {} to F32", dtype_name(dtype));
  }
}

}  // namespace deepmoe
