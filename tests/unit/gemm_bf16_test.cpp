// The bf16 GEMM (oneDNN) against a double-precision loop on the same bf16-rounded operands:
// bf16 products are exact in f32, so only f32 accumulation error remains (~1e-7).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <thread>

#include "core/dtype.h"
#include "kernels/gemm_bf16.h"
#include "test_util.h"

namespace deepmoe {
namespace {

using testing::random_vector;
using testing::relative_error;

std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = f32_to_bf16(v[i]);
  return out;
}

struct Case {
  bool ta, tb, accumulate;
  int64_t m, n, k;
};

void check_case(const Case& c, uint64_t seed) {
  // Strided operands: leading dimensions larger than the rows they hold.
  const int64_t a_rows = c.ta ? c.k : c.m, a_cols = c.ta ? c.m : c.k, lda = a_cols + 3;
  const int64_t b_rows = c.tb ? c.n : c.k, b_cols = c.tb ? c.k : c.n, ldb = b_cols + 5;
  const int64_t ldc = c.n + 2;
  const auto a = to_bf16(random_vector(size_t(a_rows * lda), seed));
  const auto b = to_bf16(random_vector(size_t(b_rows * ldb), seed + 1));
  std::vector<float> out = random_vector(size_t(c.m * ldc), seed + 2);
  std::vector<double> expected(out.begin(), out.end());
  for (int64_t i = 0; i < c.m; ++i)
    for (int64_t j = 0; j < c.n; ++j) {
      double sum = c.accumulate ? expected[size_t(i * ldc + j)] : 0.0;
      for (int64_t p = 0; p < c.k; ++p) {
        const uint16_t av = c.ta ? a[size_t(p * lda + i)] : a[size_t(i * lda + p)];
        const uint16_t bv = c.tb ? b[size_t(j * ldb + p)] : b[size_t(p * ldb + j)];
        sum += double(bf16_to_f32(av)) * double(bf16_to_f32(bv));
      }
      expected[size_t(i * ldc + j)] = sum;
    }
  gemm_bf16(c.ta, c.tb, c.m, c.n, c.k, a.data(), lda, b.data(), ldb, c.accumulate, out.data(), ldc);
  EXPECT_LT(relative_error(out, expected), 1e-6)
      << "ta " << c.ta << " tb " << c.tb << " acc " << c.accumulate << " " << c.m << "x" << c.n << "x" << c.k;
}

TEST(GemmBf16, MatchesDoubleLoopForEveryLayoutOnBf16Operands) {
  if (!cpu_has_bf16_gemm()) GTEST_SKIP() << "no AVX512-BF16 on this CPU";
  uint64_t seed = 10;
  for (const bool ta : {false, true})
    for (const bool tb : {false, true})
      for (const bool accumulate : {false, true})
        for (const auto& [m, n, k] : {std::tuple{1, 1, 1}, {7, 33, 19}, {64, 48, 130}, {3, 256, 64}})
          check_case({ta, tb, accumulate, m, n, k}, seed += 3);
}

TEST(GemmBf16, RunTimeDimensionVariesUnderOnePlan) {
  if (!cpu_has_bf16_gemm()) GTEST_SKIP() << "no AVX512-BF16 on this CPU";
  // Expert token counts change every step: the same fixed dims with different M (or K).
  for (const int64_t tokens : {5, 128, 17, 1, 64})
    for (const bool ta : {false, true})
      check_case({ta, true, true, ta ? 32 : tokens, 40, ta ? tokens : 24}, 77 + uint64_t(tokens));
}

TEST(GemmBf16, SafeFromSeveralThreadsAtOnce) {
  if (!cpu_has_bf16_gemm()) GTEST_SKIP() << "no AVX512-BF16 on this CPU";
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([t] {
      for (int i = 0; i < 20; ++i) check_case({false, true, i % 2 == 1, 16 + t, 64, 96}, uint64_t(1000 + 10 * t + i));
    });
  for (auto& thread : threads) thread.join();
}

TEST(GemmBf16, ConversionRoundsToNearestEvenLikeTheScalarRule) {
  std::vector<float> values = random_vector(1000, 5, 3.0f);
  // Ties and specials: exactly halfway between two bf16 values (even and odd neighbours), NaN,
  // infinities, the largest finite float (rounds up to infinity, as PyTorch does), subnormals.
  values.insert(values.end(), {std::bit_cast<float>(0x3f808000u), std::bit_cast<float>(0x3f818000u),
                               std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                               -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::max(),
                               std::numeric_limits<float>::denorm_min(), -0.0f});
  std::vector<uint16_t> fast(values.size());
  convert_f32_to_bf16(values.data(), fast.data(), values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    if (std::isnan(values[i])) {
      EXPECT_TRUE(std::isnan(bf16_to_f32(fast[i])));
      continue;
    }
    EXPECT_EQ(fast[i], f32_to_bf16(values[i])) << "value " << values[i];
  }
}

}  // namespace
}  // namespace deepmoe
