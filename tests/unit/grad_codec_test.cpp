// Gradient compression with error feedback (dist/grad_codec.h): the residual holds exactly what
// the encoding lost, the loss per value stays within bf16's and int8's bounds, and over many steps
// nothing is lost, only delayed.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "core/error.h"
#include "dist/grad_codec.h"

namespace deepmoe::dist {
namespace {

// Gradients of very different sizes, as a model's layers have: one scale per block of 64.
std::vector<float> gradients(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> g(n);
  for (size_t i = 0; i < n; ++i) g[i] = normal(rng) * std::pow(10.0f, float(int(i / 64 % 7)) - 6.0f);
  return g;
}

std::vector<float> decoded(GradCompression kind, const std::vector<std::byte>& payload, size_t n) {
  std::vector<float> out(n, 0.0f);
  decode_add(kind, payload, out);
  return out;
}

TEST(GradCodecTest, EncodedSizes) {
  EXPECT_EQ(encoded_bytes(GradCompression::None, 1000), 4000u);
  EXPECT_EQ(encoded_bytes(GradCompression::BF16, 1000), 2000u);
  EXPECT_EQ(encoded_bytes(GradCompression::Int8, 1000), 1000u + 4 * 4);  // 4 blocks, the last of 232
  EXPECT_EQ(encoded_bytes(GradCompression::Int8, 0), 0u);
  EXPECT_EQ(parse_grad_compression("int8"), GradCompression::Int8);
  EXPECT_THROW(parse_grad_compression("fp8"), Error);
}

TEST(GradCodecTest, ResidualCarriesExactlyWhatTheEncodingLost) {
  const size_t n = 1000;  // not a multiple of the int8 block
  const std::vector<float> g = gradients(n, 1);
  for (const GradCompression kind : {GradCompression::None, GradCompression::BF16, GradCompression::Int8}) {
    std::vector<float> residual = gradients(n, 2);
    for (float& r : residual) r *= 1e-3f;
    std::vector<float> sent(n);  // what the rank means to send: its gradient plus last step's residual
    for (size_t i = 0; i < n; ++i) sent[i] = g[i] + residual[i];
    std::vector<std::byte> payload(encoded_bytes(kind, n));
    encode_with_feedback(kind, g, residual, payload);
    const std::vector<float> got = decoded(kind, payload, n);
    for (size_t begin = 0; begin < n; begin += kInt8Block) {
      const size_t end = std::min(n, begin + kInt8Block);
      float absmax = 0;
      for (size_t i = begin; i < end; ++i) absmax = std::max(absmax, std::fabs(sent[i]));
      for (size_t i = begin; i < end; ++i) {
        ASSERT_EQ(double(got[i]) + double(residual[i]), double(sent[i])) << grad_compression_name(kind) << " " << i;
        if (kind == GradCompression::None) {
          EXPECT_EQ(residual[i], 0.0f);
        } else if (kind == GradCompression::BF16) {
          EXPECT_LE(std::fabs(residual[i]), std::ldexp(std::fabs(sent[i]), -8)) << i;  // half a bf16 ulp
        } else {
          EXPECT_LE(std::fabs(residual[i]), absmax / 254.0f * (1 + 1e-6f)) << i;  // half a step of the block
        }
      }
    }
  }
}

TEST(GradCodecTest, ErrorFeedbackLosesNothingOverSteps) {
  // The same gradient sent for 200 steps: the decoded sum falls short of 200 g by exactly the
  // last residual, so its mean converges to g although each step rounds.
  const size_t n = 300, steps = 200;
  const std::vector<float> g = gradients(n, 3);
  for (const GradCompression kind : {GradCompression::BF16, GradCompression::Int8}) {
    std::vector<float> residual(n, 0.0f);
    std::vector<double> total(n, 0.0);
    std::vector<std::byte> payload(encoded_bytes(kind, n));
    for (size_t step = 0; step < steps; ++step) {
      encode_with_feedback(kind, g, residual, payload);
      const std::vector<float> got = decoded(kind, payload, n);
      for (size_t i = 0; i < n; ++i) total[i] += got[i];
    }
    double error = 0, norm = 0, single = 0;  // the mean's error, and one rounding's, against g
    std::vector<float> once(n, 0.0f);
    encode_with_feedback(kind, g, once, payload);
    const std::vector<float> got = decoded(kind, payload, n);
    for (size_t i = 0; i < n; ++i) {
      error += std::pow(total[i] / double(steps) - double(g[i]), 2);
      single += std::pow(double(got[i]) - double(g[i]), 2);
      norm += double(g[i]) * double(g[i]);
    }
    EXPECT_LT(std::sqrt(error / norm), 1e-3) << grad_compression_name(kind);
    EXPECT_LT(std::sqrt(error), std::sqrt(single) / 20) << grad_compression_name(kind);
  }
}

TEST(GradCodecTest, Int8ZeroBlockAndWrongSizes) {
  std::vector<float> zeros(300, 0.0f), residual(300, 0.0f);
  std::vector<std::byte> payload(encoded_bytes(GradCompression::Int8, 300));
  encode_with_feedback(GradCompression::Int8, zeros, residual, payload);
  for (const float x : decoded(GradCompression::Int8, payload, 300)) EXPECT_EQ(x, 0.0f);
  for (const float r : residual) EXPECT_EQ(r, 0.0f);
  std::vector<std::byte> short_payload(10);
  EXPECT_THROW(encode_with_feedback(GradCompression::BF16, zeros, residual, short_payload), Error);
  std::vector<float> sum(300, 0.0f);
  EXPECT_THROW(decode_add(GradCompression::Int8, short_payload, sum), Error);
}

}  // namespace
}  // namespace deepmoe::dist
