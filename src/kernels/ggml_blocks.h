// llama.cpp's 32-value quantization blocks, bit for bit as its reference quantizers write them:
//   Q8_0: f16 scale d, 32 int8 q;            value = q·d,      d = max|x| / 127, q = round(x/d)
//   Q4_0: f16 scale d, 16 bytes of nibbles;  value = (q − 8)·d, d = (the x of largest |x|) / −8,
//         q = min(15, trunc(x/d + 8.5)); byte j holds element j (low nibble) and j + 16 (high).
// n must be a multiple of 32.
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace deepmoe {

constexpr int64_t kGgmlBlock = 32;
constexpr int64_t kQ8_0BlockBytes = 34;
constexpr int64_t kQ4_0BlockBytes = 18;

void quantize_q8_0(const float* x, int64_t n, uint8_t* out);
void dequantize_q8_0(const uint8_t* in, int64_t n, float* y);
void quantize_q4_0(const float* x, int64_t n, uint8_t* out);
void dequantize_q4_0(const uint8_t* in, int64_t n, float* y);

// Activations as llama.cpp's x86 CPU code feeds them to Q8_0 and Q4_0 weights: per block of
// 32, d = max|x| / 127 kept as f16, q = x · (127 / max|x|) rounded to nearest even. n values
// (a multiple of 32) give n codes and n / 32 scales (as f32, after their f16 rounding).
void quantize_activations_q8_0(const float* x, int64_t n, int8_t* q, float* d);
// n values (a multiple of 32) replaced by q·d: exactly what those products multiply.
void round_activations_q8_0(const float* x, int64_t n, float* out);

// n values of any DType that holds numbers (the float types and the ggml blocks) as f32.
void decode_to_f32(DType dtype, const void* src, float* dst, int64_t n);

}  // namespace deepmoe
