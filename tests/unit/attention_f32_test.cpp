#include "kernels/attention_f32.h"

#include <gtest/gtest.h>

#include <vector>

#include "test_util.h"

namespace deepmoe {
namespace {

using testing::random_vector;
using testing::relative_error;

struct Shape {
  int64_t m, n, k;
};

// Leading dimensions wider than the operands, so the kernels must honour the strides; outputs
// outside c's m × n block must stay untouched.
constexpr int64_t kPad = 5;
constexpr float kUntouched = 7.0f;

// c's m × n block against reference(i, j) (computed in double), and its padding columns up to
// ldc untouched.
template <typename Reference>
void expect_block_matches(const std::vector<float>& c, int64_t m, int64_t n, int64_t ldc, Reference reference,
                          int64_t k) {
  std::vector<float> got, want;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < ldc; ++j) {
      if (j >= n) {
        EXPECT_EQ(c[size_t(i * ldc + j)], kUntouched);
        continue;
      }
      want.push_back(float(reference(i, j)));
      got.push_back(c[size_t(i * ldc + j)]);
    }
  EXPECT_LT(relative_error(got, want), 1e-5) << "m=" << m << " n=" << n << " k=" << k;
}

class AttentionF32Test : public ::testing::TestWithParam<Shape> {};

TEST_P(AttentionF32Test, ScoresMatchDoubleReference) {
  const auto [m, n, k] = GetParam();
  const int64_t lda = k + kPad, ldb = k + 3, ldc = n + kPad;
  const auto a = random_vector(size_t(m * lda), 1), b = random_vector(size_t(n * ldb), 2);
  std::vector<float> c(size_t(m * ldc), kUntouched);
  const float alpha = 0.37f;
  query_key_scores(false, m, n, k, alpha, a.data(), lda, b.data(), ldb, c.data(), ldc);
  expect_block_matches(
      c, m, n, ldc,
      [&](int64_t i, int64_t j) {
        double sum = 0.0;
        for (int64_t p = 0; p < k; ++p) sum += double(a[size_t(i * lda + p)]) * double(b[size_t(j * ldb + p)]);
        return alpha * sum;
      },
      k);
}

TEST_P(AttentionF32Test, WeightedRowsMatchDoubleReference) {
  const auto [m, n, k] = GetParam();
  const int64_t lda = k + kPad, ldb = n + 3, ldc = n + kPad;
  const auto a = random_vector(size_t(m * lda), 3), b = random_vector(size_t(k * ldb), 4);
  std::vector<float> c(size_t(m * ldc), kUntouched);
  weighted_rows(false, m, n, k, a.data(), lda, b.data(), ldb, c.data(), ldc);
  expect_block_matches(
      c, m, n, ldc,
      [&](int64_t i, int64_t j) {
        double sum = 0.0;
        for (int64_t p = 0; p < k; ++p) sum += double(a[size_t(i * lda + p)]) * double(b[size_t(p * ldb + j)]);
        return sum;
      },
      k);
}

// Awkward sizes around the 4-row, 4-column, 16-lane and 64-column tiles, up to V2-Lite's decode
// (16 heads, 576-wide latent rows, 128-column blocks) and past the small-query cutoff (OpenBLAS).
INSTANTIATE_TEST_SUITE_P(AwkwardShapes, AttentionF32Test,
                         ::testing::Values(Shape{1, 1, 1}, Shape{3, 7, 15}, Shape{4, 4, 16}, Shape{5, 9, 17},
                                           Shape{16, 64, 576}, Shape{16, 128, 131}, Shape{17, 130, 33},
                                           Shape{64, 67, 100}, Shape{65, 20, 40}));

// Attention splits the cached rows (scores) and the columns (weighted sums) between threads by
// blocks; every output must come out the same whichever block computes it.
TEST(AttentionF32Test, ResultsDoNotDependOnTheSplit) {
  const int64_t m = 16, n = 130, k = 576;
  const auto a = random_vector(size_t(m * k), 5), b = random_vector(size_t(n * k), 6);
  std::vector<float> whole(size_t(m * n)), split(size_t(m * n));
  query_key_scores(false, m, n, k, 1.0f, a.data(), k, b.data(), k, whole.data(), n);
  for (int64_t first = 0; first < n; first += 37)
    query_key_scores(false, m, std::min<int64_t>(37, n - first), k, 1.0f, a.data(), k, b.data() + first * k, k,
                     split.data() + first, n);
  EXPECT_EQ(whole, split);
  const auto p = random_vector(size_t(m * n), 7), values = random_vector(size_t(n * k), 8);
  std::vector<float> out_whole(size_t(m * k)), out_split(size_t(m * k));
  weighted_rows(false, m, k, n, p.data(), n, values.data(), k, out_whole.data(), k);
  for (int64_t first = 0; first < k; first += 100)
    weighted_rows(false, m, std::min<int64_t>(100, k - first), n, p.data(), n, values.data() + first, k,
                  out_split.data() + first, k);
  EXPECT_EQ(out_whole, out_split);
}

}  // namespace
}  // namespace deepmoe
