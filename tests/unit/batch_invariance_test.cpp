// Batch-invariant mode (the server's): a row's product, and a query row's attention, must come
// out bit for bit the same whatever else shares its batch. Checked for every weight format
// against the row computed alone, and that the mode is needed (without it, some rows differ).
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <cstring>

#include "core/dtype.h"
#include "kernels/attention_f32.h"
#include "kernels/matmul.h"
#include "kernels/matmul_invariant_f32.h"
#include "kernels/quantize.h"
#include "test_util.h"

namespace deepmoe {
namespace {

ContextOptions batch_invariant() {
  ContextOptions options;
  options.batch_invariant = true;
  return options;
}

struct FormatCase {
  WeightFormat format;
  int64_t group;
};

TEST(BatchInvariance, EveryRowOfEveryFormatEqualsTheRowAlone) {
  const Context pool(2, batch_invariant());
  const int64_t rows = 96, cols = 256, max_m = 23;
  const std::vector<float> w = testing::random_vector(size_t(rows * cols), 1);
  const std::vector<float> x = testing::random_vector(size_t(max_m * cols), 2);
  std::vector<uint16_t> w_bf16(w.size());
  for (size_t i = 0; i < w.size(); ++i) w_bf16[i] = f32_to_bf16(w[i]);
  for (const FormatCase c :
       {FormatCase{WeightFormat::F32, 0}, FormatCase{WeightFormat::BF16, 0}, FormatCase{WeightFormat::Q8_0, 0},
        FormatCase{WeightFormat::Q4_0, 0}, FormatCase{WeightFormat::Int8, 0}, FormatCase{WeightFormat::Int4, 64}}) {
    QuantizedMatrix q;
    WeightMatrix matrix{WeightFormat::F32, w.data(), rows, cols};
    if (c.format == WeightFormat::BF16) {
      matrix = WeightMatrix{WeightFormat::BF16, w_bf16.data(), rows, cols};
    } else if (c.format != WeightFormat::F32) {
      q = quantize_matrix(w.data(), rows, cols, c.format, c.group);
      matrix = q.view();
    }
    std::vector<float> alone(size_t(max_m * rows)), batched(size_t(max_m * rows));
    for (int64_t m = 0; m < max_m; ++m) matmul(pool, x.data() + m * cols, 1, matrix, alone.data() + m * rows);
    for (int64_t m : {2, 3, 4, 5, 9, 16, 23}) {
      // rows [0, m) of the batch, but starting at an odd offset so each row lands at another place in its group
      const int64_t first = max_m - m;
      matmul(pool, x.data() + first * cols, m, matrix, batched.data());
      EXPECT_EQ(0, std::memcmp(batched.data(), alone.data() + first * rows, size_t(m * rows) * sizeof(float)))
          << weight_format_name(c.format) << " M = " << m;
    }
  }
}

TEST(BatchInvariance, AttentionQueryRowsEqualTheRowAlone) {
  const int64_t m = 150, n = 70, k = 80;  // more query rows than the tile kernels take outside this mode
  const std::vector<float> a = testing::random_vector(size_t(m * k), 3), b = testing::random_vector(size_t(n * k), 4);
  std::vector<float> all(size_t(m * n)), one(static_cast<size_t>(n));
  query_key_scores(true, m, n, k, 0.5f, a.data(), k, b.data(), k, all.data(), n);
  for (int64_t i : {0, 63, 64, 149}) {
    query_key_scores(true, 1, n, k, 0.5f, a.data() + i * k, k, b.data(), k, one.data(), n);
    EXPECT_EQ(0, std::memcmp(one.data(), all.data() + i * n, size_t(n) * sizeof(float))) << "row " << i;
  }
  const std::vector<float> p = testing::random_vector(size_t(m * n), 5), v = testing::random_vector(size_t(n * k), 6);
  std::vector<float> sums(size_t(m * k)), sum(static_cast<size_t>(k));
  weighted_rows(true, m, k, n, p.data(), n, v.data(), k, sums.data(), k);
  for (int64_t i : {0, 64, 149}) {
    weighted_rows(true, 1, k, n, p.data() + i * n, n, v.data(), k, sum.data(), k);
    EXPECT_EQ(0, std::memcmp(sum.data(), sums.data() + i * k, size_t(k) * sizeof(float))) << "row " << i;
  }
}

TEST(BatchInvarianceOff, SomeRowsDependOnTheBatch) {
  // The mode is what makes the rows equal: without it, M = 1 (sgemv) and M = 16 (sgemm) round differently.
  const Context pool(1);
  const int64_t rows = 64, cols = 256, m = 16;
  const std::vector<float> w = testing::random_vector(size_t(rows * cols), 7),
                           x = testing::random_vector(size_t(m * cols), 8);
  const WeightMatrix matrix{WeightFormat::F32, w.data(), rows, cols};
  std::vector<float> alone(static_cast<size_t>(rows)), batched(size_t(m * rows));
  matmul(pool, x.data(), 1, matrix, alone.data());
  matmul(pool, x.data(), m, matrix, batched.data());
  EXPECT_NE(0, std::memcmp(alone.data(), batched.data(), size_t(rows) * sizeof(float)));
}

}  // namespace
}  // namespace deepmoe

namespace deepmoe {
namespace {

TEST(InvariantF32Kernel, MatchesDoubleAndItsPortableTwinBitForBit) {
  // Awkward sizes: rows not a multiple of the 16-wide panels, columns not of the 4 partial sums.
  // BF16 weights stay 16-bit in their panels: the reference multiplies by their exact values.
  for (const auto& [rows, cols] : {std::pair<int64_t, int64_t>{37, 45}, {16, 64}, {5, 3}}) {
    const std::vector<float> w = testing::random_vector(size_t(rows * cols), 11),
                             x = testing::random_vector(size_t(4 * cols), 12);
    std::vector<uint16_t> bits(w.size());
    std::vector<float> widened(w.size());
    for (size_t i = 0; i < w.size(); ++i) widened[i] = bf16_to_f32(bits[i] = f32_to_bf16(w[i]));
    for (const WeightFormat format : {WeightFormat::F32, WeightFormat::BF16}) {
      const bool half = format == WeightFormat::BF16;
      const WeightMatrix matrix{format, half ? static_cast<const void*>(bits.data()) : w.data(), rows, cols};
      const PackedPanels& panels = packed_panels(matrix);
      EXPECT_EQ(panels.halves.empty(), !half);
      EXPECT_EQ(panels.values.empty(), half);
      for (int64_t m = 1; m <= 4; ++m) {
        const std::string where = fmt::format("{} {}x{} M={}", weight_format_name(format), rows, cols, m);
        std::vector<float> fast(size_t(m * rows), -1.0f), portable(size_t(m * rows), -2.0f);
        matmul_invariant_f32(x.data(), cols, m, panels, fast.data(), rows, 0, rows);
        matmul_invariant_f32_portable(x.data(), cols, m, panels, portable.data(), rows, 0, rows);
        EXPECT_EQ(0, std::memcmp(fast.data(), portable.data(), fast.size() * sizeof(float))) << where;
        const std::vector<double> expected = testing::matmul_reference(x, m, half ? widened : w, rows, cols);
        EXPECT_LT(testing::relative_error(fast, expected), 1e-6) << where;
      }
      // A range that starts and ends inside panels leaves the other outputs alone.
      std::vector<float> part(size_t(rows), 7.0f);
      matmul_invariant_f32(x.data(), cols, 1, panels, part.data(), rows, 1, rows - 1);
      EXPECT_EQ(part[0], 7.0f);
      EXPECT_EQ(part[size_t(rows - 1)], 7.0f);
    }
  }
}

}  // namespace
}  // namespace deepmoe
