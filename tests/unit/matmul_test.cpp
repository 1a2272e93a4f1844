#include "kernels/matmul.h"

#include <gtest/gtest.h>

#include <thread>

#include "core/dtype.h"
#include "test_util.h"

namespace deepmoe {
namespace {

using testing::random_vector;
using testing::relative_error;

struct Shape {
  int64_t m, rows, cols;
};

class MatmulTest : public ::testing::TestWithParam<std::tuple<Shape, WeightFormat, int>> {};

TEST_P(MatmulTest, MatchesNaiveDoubleLoop) {
  const auto [shape, format, threads] = GetParam();
  auto x = random_vector(size_t(shape.m * shape.cols), 1);
  auto w = random_vector(size_t(shape.rows * shape.cols), 2);
  std::vector<uint16_t> w_bf16(w.size());
  if (format == WeightFormat::BF16) {
    for (size_t i = 0; i < w.size(); ++i) {
      w_bf16[i] = f32_to_bf16(w[i]);
      w[i] = bf16_to_f32(w_bf16[i]);  // the reference sees exactly the stored values
    }
  }
  const WeightMatrix matrix =
      testing::weight_matrix(format, format == WeightFormat::BF16 ? static_cast<const void*>(w_bf16.data()) : w.data(),
                             shape.rows, shape.cols);
  std::vector<float> y(size_t(shape.m * shape.rows));
  const Context ctx(threads);
  matmul(ctx, x.data(), shape.m, matrix, y.data());
  EXPECT_LT(relative_error(y, testing::matmul_reference(x, shape.m, w, shape.rows, shape.cols)), 1e-5)
      << "m=" << shape.m << " rows=" << shape.rows << " cols=" << shape.cols;
}

// Awkward sizes: not multiples of the 16-wide SIMD blocks, both sides of the small-batch cutoff.
INSTANTIATE_TEST_SUITE_P(AwkwardShapes, MatmulTest,
                         ::testing::Combine(::testing::Values(Shape{1, 19, 37}, Shape{2, 33, 131}, Shape{3, 7, 16},
                                                              Shape{4, 65, 200}, Shape{5, 19, 37}, Shape{17, 600, 45},
                                                              Shape{64, 513, 130}),
                                            ::testing::Values(WeightFormat::F32, WeightFormat::BF16),
                                            ::testing::Values(1, 2)));

TEST(MatmulTest, StridedRowsReadAndWriteOnlyTheirColumns) {
  const int64_t m = 3, rows = 21, cols = 29, x_stride = 40, y_stride = 50;
  auto x = random_vector(size_t(m * x_stride), 3);
  auto w = random_vector(size_t(rows * cols), 4);
  std::vector<float> y(size_t(m * y_stride), 7.0f);
  const Context ctx(2);
  matmul(ctx, x.data(), m, testing::weight_matrix(WeightFormat::F32, w.data(), rows, cols), y.data(), x_stride,
         y_stride);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t r = 0; r < rows; ++r) {
      double sum = 0.0;
      for (int64_t k = 0; k < cols; ++k) sum += double(x[size_t(i * x_stride + k)]) * w[size_t(r * cols + k)];
      EXPECT_NEAR(y[size_t(i * y_stride + r)], sum, 1e-4 * (1 + std::abs(sum)));
    }
    for (int64_t r = rows; r < y_stride; ++r) EXPECT_EQ(y[size_t(i * y_stride + r)], 7.0f);
  }
}

TEST(GemmF32Test, TransposedAndPlainBMatchNaive) {
  const int64_t m = 7, n = 13, k = 29;
  auto a = random_vector(size_t(m * k), 5);
  auto b = random_vector(size_t(n * k), 6);
  std::vector<float> c_nt(size_t(m * n)), c_nn(size_t(m * n));
  gemm_f32(true, m, n, k, 0.5f, a.data(), k, b.data(), k, 0.0f, c_nt.data(), n);
  // b read as [k, n] for the plain product
  gemm_f32(false, m, n, k, 1.0f, a.data(), k, b.data(), n, 0.0f, c_nn.data(), n);
  std::vector<double> expect_nt(size_t(m * n)), expect_nn(size_t(m * n));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t p = 0; p < k; ++p) {
        expect_nt[size_t(i * n + j)] += 0.5 * a[size_t(i * k + p)] * b[size_t(j * k + p)];
        expect_nn[size_t(i * n + j)] += double(a[size_t(i * k + p)]) * b[size_t(p * n + j)];
      }
  EXPECT_LT(relative_error(c_nt, expect_nt), 1e-6);
  EXPECT_LT(relative_error(c_nn, expect_nn), 1e-6);
}

// Our pool runs GEMMs on several threads at once; the BLAS must allow that (Debian's serial
// OpenBLAS does not: it returned wrong products in about 1 of 700 concurrent calls).
TEST(GemmF32Test, GemmIsSafeFromSeveralThreads) {
  const int64_t m = 64, n = 128, k = 512;
  std::vector<float> a[2], b[2], expected[2];
  for (int t = 0; t < 2; ++t) {
    a[t] = random_vector(size_t(m * k), 10 + uint64_t(t));
    b[t] = random_vector(size_t(n * k), 20 + uint64_t(t));
    expected[t].resize(size_t(m * n));
    gemm_f32(true, m, n, k, 1.0f, a[t].data(), k, b[t].data(), k, 0.0f, expected[t].data(), n);
  }
  int wrong = 0;
  for (int round = 0; round < 1500; ++round) {
    std::vector<float> got[2];
    std::thread workers[2];
    for (int t = 0; t < 2; ++t) {
      got[t].resize(size_t(m * n));
      workers[t] = std::thread([&, t] {
        for (int r = 0; r < 4; ++r)
          gemm_f32(true, m, n, k, 1.0f, a[t].data(), k, b[t].data(), k, 0.0f, got[t].data(), n);
      });
    }
    for (auto& w : workers) w.join();
    for (int t = 0; t < 2; ++t) wrong += got[t] != expected[t];
  }
  EXPECT_EQ(wrong, 0);
}

}  // namespace
}  // namespace deepmoe
