#include "kernels/ops.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "test_util.h"

namespace deepmoe {
namespace {

using testing::random_vector;
using testing::relative_error;

TEST(OpsTest, RmsnormMatchesDoubleFormula) {
  const int64_t tokens = 3, dim = 77;
  auto x = random_vector(size_t(tokens * dim), 1, 3.0f);
  auto weight = random_vector(size_t(dim), 2);
  std::vector<float> out(x.size());
  rmsnorm(x.data(), dim, weight.data(), tokens, dim, 1e-6f, out.data(), dim);
  std::vector<double> expected(x.size());
  for (int64_t t = 0; t < tokens; ++t) {
    double mean_square = 0.0;
    for (int64_t i = 0; i < dim; ++i) mean_square += double(x[size_t(t * dim + i)]) * x[size_t(t * dim + i)] / dim;
    for (int64_t i = 0; i < dim; ++i)
      expected[size_t(t * dim + i)] = x[size_t(t * dim + i)] / std::sqrt(mean_square + 1e-6) * weight[size_t(i)];
  }
  EXPECT_LT(relative_error(out, expected), 1e-6);
}

TEST(OpsTest, SoftmaxMatchesDoubleFormulaOnLargeLogits) {
  auto row = random_vector(101, 3, 20.0f);  // large spread: needs the max subtraction
  std::vector<double> expected(row.size());
  double max_value = -1e300, sum = 0.0;
  for (float v : row) max_value = std::max(max_value, double(v));
  for (size_t i = 0; i < row.size(); ++i) sum += expected[i] = std::exp(row[i] - max_value);
  for (auto& e : expected) e /= sum;
  softmax_inplace(row.data(), int64_t(row.size()));
  EXPECT_LT(relative_error(row, expected), 1e-6);
}

TEST(OpsTest, SiluMulMatchesFormula) {
  auto gate = random_vector(55, 4, 4.0f), up = random_vector(55, 5);
  std::vector<float> out(55);
  silu_mul(gate.data(), up.data(), 55, out.data());
  std::vector<double> expected(55);
  for (size_t i = 0; i < 55; ++i) expected[i] = gate[i] / (1.0 + std::exp(-double(gate[i]))) * up[i];
  EXPECT_LT(relative_error(out, expected), 1e-6);
}

TEST(OpsTest, RopeRotatesInterleavedPairs) {
  const int64_t dim = 10;
  auto x = random_vector(size_t(dim), 6);
  std::vector<float> cos(dim / 2), sin(dim / 2);
  std::vector<double> expected(static_cast<size_t>(dim));
  for (int64_t i = 0; i < dim / 2; ++i) {
    const double angle = 0.3 * double(i + 1);
    cos[size_t(i)] = float(std::cos(angle));
    sin[size_t(i)] = float(std::sin(angle));
    expected[size_t(2 * i)] = x[size_t(2 * i)] * std::cos(angle) - x[size_t(2 * i + 1)] * std::sin(angle);
    expected[size_t(2 * i + 1)] = x[size_t(2 * i)] * std::sin(angle) + x[size_t(2 * i + 1)] * std::cos(angle);
  }
  rope_rotate_pairs(x.data(), dim, cos.data(), sin.data());
  EXPECT_LT(relative_error(x, expected), 1e-6);
}

TEST(OpsTest, AxpyAddsScaled) {
  auto x = random_vector(33, 7), y = random_vector(33, 8);
  std::vector<double> expected(33);
  for (size_t i = 0; i < 33; ++i) expected[i] = y[i] + 0.25 * x[i];
  axpy(33, 0.25f, x.data(), y.data());
  EXPECT_LT(relative_error(y, expected), 1e-7);
}

TEST(OpsTest, LogSumExpMatchesLongDoubleFormula) {
  // A spread of 200: exp overflows without the maximum subtracted.
  for (int64_t n : {1, 17, 4099}) {
    const auto x = random_vector(size_t(n), uint64_t(40 + n), 200.0f);
    long double max = x[0], sum = 0;
    for (float v : x) max = std::max(max, (long double)v);
    for (float v : x) sum += std::exp((long double)v - max);
    const double expected = double(std::log(sum) + max);
    EXPECT_NEAR(log_sum_exp(x.data(), n), expected, 1e-12 * std::abs(expected)) << "n=" << n;
  }
}

TEST(OpsTest, FirstArgmaxIsStdMaxElementsAnswer) {
  // Lengths around the 16-lane body; the maximum planted in the tail, the body, twice (the first
  // wins), and next to NaNs (never chosen).
  for (int64_t n : {1, 15, 16, 17, 100, 4096, 4099}) {
    for (int trial = 0; trial < 6; ++trial) {
      auto v = random_vector(size_t(n), uint64_t(100 + n + trial));
      const size_t a = size_t((trial * 7919 + 13) % n), b = size_t((trial * 104729 + 5) % n);
      if (trial >= 2) v[a] = 9.0f;
      if (trial >= 3) v[b] = 9.0f;
      if (trial >= 4 && n > 2) v[size_t(n / 2)] = v[0] = NAN;
      if (trial == 5) v[size_t(n - 1)] = 9.5f;
      const auto expected =
          std::max_element(v.begin(), v.end(), [](float x, float y) { return x < y || std::isnan(x); });
      EXPECT_EQ(first_argmax(v.data(), n), expected - v.begin()) << "n=" << n << " trial " << trial;
    }
  }
  const float all_nan[3] = {NAN, NAN, NAN};
  EXPECT_EQ(first_argmax(all_nan, 3), 0);
}

}  // namespace
}  // namespace deepmoe
