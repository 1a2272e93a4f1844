// Quantized matmul kernels against dequantize-then-multiply in double, on random data with
// awkward sizes, through both the AVX-512 and the portable kernels.
#include <gtest/gtest.h>

#include <cmath>

#include "core/dtype.h"
#include "core/error.h"
#include "kernels/ggml_blocks.h"
#include "kernels/matmul.h"
#include "kernels/matmul_q4_vnni.h"
#include "kernels/matmul_q8_vnni.h"
#include "kernels/matmul_quant.h"
#include "kernels/quantize.h"
#include "test_util.h"

namespace deepmoe {
namespace {

using testing::random_vector;
using testing::relative_error;

struct QuantCase {
  const char* name;
  WeightFormat format;
  int64_t group;
  bool asymmetric;
  ActivationQuant activations;
};

struct Shape {
  int64_t m, rows, cols;
};

ContextOptions portable_kernels(bool portable) {
  ContextOptions options;
  options.portable_quant_kernels = portable;
  return options;
}

class QuantMatmulTest : public ::testing::TestWithParam<std::tuple<QuantCase, Shape, bool>> {};

TEST_P(QuantMatmulTest, MatchesDequantizedProduct) {
  const auto [c, shape, portable] = GetParam();
  // Offset inputs, so asymmetric ranges and zero points matter.
  auto x = random_vector(size_t(shape.m * shape.cols), 7);
  for (auto& v : x) v += 0.3f;
  auto source = random_vector(size_t(shape.rows * shape.cols), 8, 0.05f);
  for (size_t i = 0; i < source.size(); ++i) source[i] += 0.02f * float(i % 5);
  const QuantizedMatrix q = quantize_matrix(source.data(), shape.rows, shape.cols, c.format, c.group, c.asymmetric);
  WeightMatrix w = q.view();
  w.activation_quant = c.activations;
  if (c.activations == ActivationQuant::Static) {
    const Uint8Range range = uint8_range(-2.5f, 3.5f);  // clips some of the normal inputs, as calibration can
    w.activation_scale = range.scale;
    w.activation_zero_point = range.zero_point;
  }

  std::vector<float> dequantized(source.size());
  dequantize_rows(w, 0, shape.rows, dequantized.data());
  // The dequantized weights are close to the source (each within half a step of its scale).
  EXPECT_LT(relative_error(dequantized, source),
            c.format == WeightFormat::Int4 || c.format == WeightFormat::Q4_0 ? 0.2 : 0.02);
  std::vector<float> x_seen = x;
  if (c.activations != ActivationQuant::None) {
    QuantizedActivations xq;
    const Uint8Range range{w.activation_scale, w.activation_zero_point};
    quantize_activations(x.data(), shape.m, shape.cols, shape.cols,
                         c.activations == ActivationQuant::Static ? &range : nullptr, xq);
    dequantize_activations(xq, shape.m, shape.cols, x_seen.data());
    EXPECT_GT(relative_error(x_seen, x), 0.0);
  }
  // The ggml formats multiply activations rounded to Q8_0 blocks, as llama.cpp does (the VNNI
  // Q4_0 kernel in integers): the reference takes exactly those values.
  if (c.format == WeightFormat::Q8_0 || c.format == WeightFormat::Q4_0) {
    for (int64_t m = 0; m < shape.m; ++m)
      round_activations_q8_0(x.data() + m * shape.cols, shape.cols, x_seen.data() + m * shape.cols);
    EXPECT_GT(relative_error(x_seen, x), 1e-4);
    EXPECT_LT(relative_error(x_seen, x), 1e-2);
  }
  if (!portable && shape.m <= kSmallBatchMax && q4_vnni_applies(w)) {  // the kernel's own view agrees
    Q4Activations prepared;
    std::vector<float> kernel_view(x.size());
    prepare_q4_activations(x.data(), shape.cols, shape.m, shape.cols, prepared);
    dequantize_q4_activations(prepared, kernel_view.data());
    EXPECT_EQ(kernel_view, x_seen);
  }
  if (!portable && shape.m <= kSmallBatchMax && q8_vnni_applies(w)) {
    Q8Activations prepared;
    std::vector<float> kernel_view(x.size());
    prepare_q8_activations(x.data(), shape.cols, shape.m, shape.cols, prepared);
    dequantize_q8_activations(prepared, kernel_view.data());
    EXPECT_EQ(kernel_view, x_seen);
  }
  const auto expected = testing::matmul_reference(x_seen, shape.m, dequantized, shape.rows, shape.cols);
  for (int threads : {1, 2}) {
    const Context ctx(threads, portable_kernels(portable));
    std::vector<float> y(size_t(shape.m * shape.rows));
    matmul(ctx, x.data(), shape.m, w, y.data());
    EXPECT_LT(relative_error(y, expected), 2e-6)
        << c.name << " m=" << shape.m << " rows=" << shape.rows << " cols=" << shape.cols << " threads=" << threads;
  }
  // The per-thread entry point (used per attention head) gives the same rows.
  std::vector<float> y_rows(size_t(shape.m * shape.rows));
  matmul_rows(Context(1, portable_kernels(portable)), x.data(), shape.cols, shape.m, w, y_rows.data(), shape.rows, 0,
              shape.rows);
  EXPECT_LT(relative_error(y_rows, expected), 2e-6) << c.name;
}

const QuantCase kCases[] = {
    {"q8_0", WeightFormat::Q8_0, 0, false, ActivationQuant::None},
    {"q4_0", WeightFormat::Q4_0, 0, false, ActivationQuant::None},
    {"w8", WeightFormat::Int8, 0, false, ActivationQuant::None},
    {"w4g32", WeightFormat::Int4, 32, false, ActivationQuant::None},
    {"w4g64_asym", WeightFormat::Int4, 64, true, ActivationQuant::None},
    {"w4g128", WeightFormat::Int4, 128, false, ActivationQuant::None},
    {"w4g128_asym", WeightFormat::Int4, 128, true, ActivationQuant::None},
    {"w8a8_dynamic", WeightFormat::Int8, 0, false, ActivationQuant::Dynamic},
    {"w8a8_static", WeightFormat::Int8, 0, false, ActivationQuant::Static},
};

// Rows not a multiple of the 16-row thread blocks; columns an odd number of groups; M on both
// sides of the decode/GEMM cutoff (9 × 161: the integer GEMM's 4-row tiles plus one, a 128-row
// thread block plus a panel of one row).
INSTANTIATE_TEST_SUITE_P(Formats, QuantMatmulTest,
                         ::testing::Combine(::testing::ValuesIn(kCases),
                                            ::testing::Values(Shape{1, 37, 384}, Shape{2, 19, 640}, Shape{3, 70, 128},
                                                              Shape{4, 33, 1152}, Shape{1, 40, 2048},
                                                              Shape{2, 17, 1408}, Shape{5, 21, 384},
                                                              Shape{17, 140, 256}, Shape{9, 161, 1408}),
                                            ::testing::Bool()),
                         [](const auto& info) {
                           const Shape s = std::get<1>(info.param);
                           return std::string(std::get<0>(info.param).name) + "_m" + std::to_string(s.m) + "_" +
                                  std::to_string(s.rows) + "x" + std::to_string(s.cols) +
                                  (std::get<2>(info.param) ? "_portable" : "_dispatched");
                         });

// Int8 takes any column count (the tail through masked loads or a scalar loop).
TEST(QuantMatmulTest, Int8AnyColumnCount) {
  for (bool portable : {false, true}) {
    for (const int64_t cols : {1, 15, 33, 131, 200}) {
      for (const auto activations : {ActivationQuant::None, ActivationQuant::Dynamic}) {
        const int64_t m = 3, rows = 23;
        auto x = random_vector(size_t(m * cols), 9);
        auto source = random_vector(size_t(rows * cols), 10);
        QuantizedMatrix q = quantize_matrix(source.data(), rows, cols, WeightFormat::Int8);
        WeightMatrix w = q.view();
        w.activation_quant = activations;
        std::vector<float> dequantized(source.size()), x_seen = x;
        dequantize_rows(w, 0, rows, dequantized.data());
        if (activations == ActivationQuant::Dynamic) {
          QuantizedActivations xq;
          quantize_activations(x.data(), m, cols, cols, nullptr, xq);
          dequantize_activations(xq, m, cols, x_seen.data());
        }
        const Context ctx(1, portable_kernels(portable));
        std::vector<float> y(size_t(m * rows));
        matmul(ctx, x.data(), m, w, y.data());
        EXPECT_LT(relative_error(y, testing::matmul_reference(x_seen, m, dequantized, rows, cols)), 2e-6)
            << "cols=" << cols;
      }
    }
  }
}

TEST(QuantizeTest, Int4CodesUseTheirRangeAndRoundTrip) {
  auto source = random_vector(4 * 128, 11);
  for (bool asymmetric : {false, true}) {
    const QuantizedMatrix q = quantize_matrix(source.data(), 4, 128, WeightFormat::Int4, 64, asymmetric);
    std::vector<float> back(source.size());
    dequantize_rows(q.view(), 0, 4, back.data());
    for (size_t i = 0; i < source.size(); ++i) {
      const float scale = f16_to_f32(q.group_scales[i / 64]);
      EXPECT_LE(std::fabs(back[i] - source[i]), 0.5f * scale * 1.001f + 1e-6f) << i;
    }
  }
}

TEST(QuantizeTest, RefusesColumnsThatAreNotWholeGroups) {
  std::vector<float> w(3 * 48, 1.0f);
  EXPECT_THROW(quantize_matrix(w.data(), 3, 48, WeightFormat::Q4_0), Error);
  EXPECT_THROW(quantize_matrix(w.data(), 3, 48, WeightFormat::Int4, 32), Error);
  EXPECT_THROW(quantize_matrix(w.data(), 3, 64, WeightFormat::Int4, 48), Error);
}

TEST(QuantizeTest, DynamicActivationRangeCoversEachRow) {
  auto x = random_vector(2 * 50, 12);
  QuantizedActivations xq;
  quantize_activations(x.data(), 2, 50, 50, nullptr, xq);
  std::vector<float> back(x.size());
  dequantize_activations(xq, 2, 50, back.data());
  for (size_t i = 0; i < x.size(); ++i) EXPECT_LE(std::fabs(back[i] - x[i]), 0.5f * xq.scale[i / 50] * 1.001f);
  EXPECT_EQ(xq.stride, 64);
  for (int64_t k = 50; k < 64; ++k) EXPECT_EQ(xq.values[size_t(k)], 0);
}

}  // namespace
}  // namespace deepmoe
