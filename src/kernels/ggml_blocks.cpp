#include "kernels/ggml_blocks.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/dtype.h"

namespace deepmoe {

namespace {
void put_f16(uint8_t* p, float v) {
  const uint16_t bits = f32_to_f16(v);
  std::memcpy(p, &bits, 2);
}
float get_f16(const uint8_t* p) {
  uint16_t bits;
  std::memcpy(&bits, p, 2);
  return f16_to_f32(bits);
}
}  // namespace

void quantize_q8_0(const float* x, int64_t n, uint8_t* out) {
  for (int64_t b = 0; b < n / kGgmlBlock; ++b, x += kGgmlBlock, out += kQ8_0BlockBytes) {
    float amax = 0;
    for (int64_t j = 0; j < kGgmlBlock; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    put_f16(out, d);  // the f32 d quantizes; its f16 rounding is what is stored
    for (int64_t j = 0; j < kGgmlBlock; ++j) out[2 + j] = uint8_t(int8_t(std::lround(x[j] * id)));
  }
}

// Dequantization widens prefill's weight panels: built for AVX-512 and AVX2 too, so the inner
// loops vectorize.
__attribute__((target_clones("avx512f", "avx2", "default"))) void dequantize_q8_0(const uint8_t* in, int64_t n,
                                                                                  float* y) {
  for (int64_t b = 0; b < n / kGgmlBlock; ++b, in += kQ8_0BlockBytes, y += kGgmlBlock) {
    const float d = get_f16(in);
    for (int64_t j = 0; j < kGgmlBlock; ++j) y[j] = float(int8_t(in[2 + j])) * d;
  }
}

void quantize_q4_0(const float* x, int64_t n, uint8_t* out) {
  for (int64_t b = 0; b < n / kGgmlBlock; ++b, x += kGgmlBlock, out += kQ4_0BlockBytes) {
    float amax = 0, max = 0;
    for (int64_t j = 0; j < kGgmlBlock; ++j)
      if (std::fabs(x[j]) > amax) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    const float d = max / -8.0f;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    put_f16(out, d);
    for (int64_t j = 0; j < kGgmlBlock / 2; ++j) {
      const auto level = [&](float v) { return uint8_t(std::min(15, int(int8_t(v * id + 8.5f)))); };
      out[2 + j] = uint8_t(level(x[j]) | (level(x[j + kGgmlBlock / 2]) << 4));
    }
  }
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void dequantize_q4_0(const uint8_t* in, int64_t n,
                                                                                  float* y) {
  for (int64_t b = 0; b < n / kGgmlBlock; ++b, in += kQ4_0BlockBytes, y += kGgmlBlock) {
    const float d = get_f16(in);
    for (int64_t j = 0; j < kGgmlBlock / 2; ++j) {
      y[j] = float(int(in[2 + j] & 0x0f) - 8) * d;
      y[j + kGgmlBlock / 2] = float(int(in[2 + j] >> 4) - 8) * d;
    }
  }
}

// Built for AVX-512, AVX2 and plain x86-64: the rounding needs SSE4.1's roundps to be inlined
// (otherwise every value is a call to nearbyintf: a quarter of a Q4_0 prefill, measured).
__attribute__((target_clones("avx512f", "avx2", "default"))) void quantize_activations_q8_0(const float* x, int64_t n,
                                                                                            int8_t* q, float* d) {
  for (int64_t b = 0; b < n / kGgmlBlock; ++b, x += kGgmlBlock, q += kGgmlBlock) {
    float amax = 0.0f;
    for (int64_t j = 0; j < kGgmlBlock; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float inverse = amax != 0.0f ? 127.0f / amax : 0.0f;
    for (int64_t j = 0; j < kGgmlBlock; ++j) q[j] = int8_t(std::nearbyint(x[j] * inverse));
    d[b] = amax / 127.0f;
  }
  for (int64_t b = 0; b < n / kGgmlBlock; ++b) d[b] = f16_to_f32(f32_to_f16(d[b]));
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void round_activations_q8_0(const float* x, int64_t n,
                                                                                         float* out) {
  thread_local std::vector<int8_t> q;
  thread_local std::vector<float> d;
  q.resize(size_t(n));
  d.resize(size_t(n / kGgmlBlock));
  quantize_activations_q8_0(x, n, q.data(), d.data());
  for (int64_t i = 0; i < n; ++i) out[i] = float(q[size_t(i)]) * d[size_t(i / kGgmlBlock)];
}

void decode_to_f32(DType dtype, const void* src, float* dst, int64_t n) {
  if (dtype == DType::Q8_0) return dequantize_q8_0(static_cast<const uint8_t*>(src), n, dst);
  if (dtype == DType::Q4_0) return dequantize_q4_0(static_cast<const uint8_t*>(src), n, dst);
  convert_to_f32(dtype, src, dst, size_t(n));
}

}  // namespace deepmoe
