#include "dist/grad_codec.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/dtype.h"
#include "core/error.h"

namespace deepmoe::dist {

GradCompression parse_grad_compression(std::string_view name) {
  if (name == "none") return GradCompression::None;
  if (name == "bf16") return GradCompression::BF16;
  if (name == "int8") return GradCompression::Int8;
  fail("--grad-compression: expected none, bf16 or int8, found '{}'", name);
}

const char* grad_compression_name(GradCompression kind) {
  switch (kind) {
    case GradCompression::BF16: return "bf16";
    case GradCompression::Int8: return "int8";
    case GradCompression::None: break;
  }
  return "none";
}

size_t encoded_bytes(GradCompression kind, size_t n) {
  switch (kind) {
    case GradCompression::BF16: return 2 * n;
    case GradCompression::Int8: return n + sizeof(float) * ((n + kInt8Block - 1) / kInt8Block);
    case GradCompression::None: break;
  }
  return sizeof(float) * n;
}

namespace {

void check_sizes(GradCompression kind, size_t n, size_t bytes, const char* what) {
  if (bytes != encoded_bytes(kind, n))
    fail("{}: {} bytes for {} {} values, expected {}", what, bytes, n, grad_compression_name(kind),
         encoded_bytes(kind, n));
}

}  // namespace

void encode_with_feedback(GradCompression kind, std::span<const float> values, std::span<float> residual,
                          std::span<std::byte> out) {
  const size_t n = values.size();
  if (residual.size() != n) fail("gradient encoding: {} residuals for {} values", residual.size(), n);
  check_sizes(kind, n, out.size(), "gradient encoding");
  std::byte* bytes = out.data();
  if (kind == GradCompression::None) {
    for (size_t i = 0; i < n; ++i) {
      const float x = values[i] + residual[i];
      std::memcpy(bytes + sizeof(float) * i, &x, sizeof x);
      residual[i] = 0.0f;
    }
    return;
  }
  if (kind == GradCompression::BF16) {
    for (size_t i = 0; i < n; ++i) {
      const float x = values[i] + residual[i];
      const uint16_t b = f32_to_bf16(x);
      std::memcpy(bytes + 2 * i, &b, sizeof b);
      residual[i] = x - bf16_to_f32(b);
    }
    return;
  }
  // Int8: the block's scales, then its values. x / scale lies in [-127, 127] by construction; the
  // clamp only guards against rounding at the edge.
  const size_t n_blocks = (n + kInt8Block - 1) / kInt8Block;
  std::byte* q = bytes + sizeof(float) * n_blocks;
  for (size_t block = 0; block < n_blocks; ++block) {
    const size_t begin = block * kInt8Block, end = std::min(n, begin + kInt8Block);
    float absmax = 0.0f;
    for (size_t i = begin; i < end; ++i) absmax = std::max(absmax, std::fabs(values[i] + residual[i]));
    const float scale = absmax / 127.0f;
    std::memcpy(bytes + sizeof(float) * block, &scale, sizeof scale);
    const float inverse = scale > 0 ? 1.0f / scale : 0.0f;
    for (size_t i = begin; i < end; ++i) {
      const float x = values[i] + residual[i];
      const int8_t v = int8_t(std::clamp(std::nearbyint(x * inverse), -127.0f, 127.0f));
      q[i] = std::byte(uint8_t(v));
      residual[i] = x - float(v) * scale;
    }
  }
}

void decode_add(GradCompression kind, std::span<const std::byte> in, std::span<float> sum) {
  const size_t n = sum.size();
  check_sizes(kind, n, in.size(), "gradient decoding");
  const std::byte* bytes = in.data();
  if (kind == GradCompression::None) {
    for (size_t i = 0; i < n; ++i) {
      float x = 0;
      std::memcpy(&x, bytes + sizeof(float) * i, sizeof x);
      sum[i] += x;
    }
    return;
  }
  if (kind == GradCompression::BF16) {
    for (size_t i = 0; i < n; ++i) {
      uint16_t b = 0;
      std::memcpy(&b, bytes + 2 * i, sizeof b);
      sum[i] += bf16_to_f32(b);
    }
    return;
  }
  const size_t n_blocks = (n + kInt8Block - 1) / kInt8Block;
  const std::byte* q = bytes + sizeof(float) * n_blocks;
  for (size_t block = 0; block < n_blocks; ++block) {
    float scale = 0;
    std::memcpy(&scale, bytes + sizeof(float) * block, sizeof scale);
    const size_t begin = block * kInt8Block, end = std::min(n, begin + kInt8Block);
    for (size_t i = begin; i < end; ++i) sum[i] += float(int8_t(uint8_t(q[i]))) * scale;
  }
}

}  // namespace deepmoe::dist
