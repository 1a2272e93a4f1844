#include "core/dtype.h"

#include <gtest/gtest.h>

#include <cmath>

namespace deepmoe {
namespace {

TEST(DtypeTest, Bf16RoundsToNearestEven) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  // 1 + 2^-8 is exactly halfway between two bf16 values: ties go to the even mantissa (1.0).
  EXPECT_EQ(f32_to_bf16(1.0f + 1.0f / 256), 0x3f80);
  EXPECT_EQ(f32_to_bf16(1.0f + 3.0f / 256), 0x3f82);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
  for (float value : {0.1f, -3.75f, 1e-30f, 6.5e4f})
    EXPECT_NEAR(bf16_to_f32(f32_to_bf16(value)), value, std::abs(value) / 128);
}

TEST(DtypeTest, F16DecodesNormalsSubnormalsAndSpecials) {
  EXPECT_EQ(f16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_f32(0xc000), -2.0f);
  EXPECT_EQ(f16_to_f32(0x7bff), 65504.0f);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_TRUE(std::isinf(f16_to_f32(0x7c00)));
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7e00)));
}

TEST(DtypeTest, Fp8E4m3DecodesAsDeepSeekShipsIt) {
  EXPECT_EQ(fp8_e4m3_to_f32(0x38), 1.0f);    // exponent 7 = bias
  EXPECT_EQ(fp8_e4m3_to_f32(0x7e), 448.0f);  // largest finite
  EXPECT_EQ(fp8_e4m3_to_f32(0xfe), -448.0f);
  EXPECT_EQ(fp8_e4m3_to_f32(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
  EXPECT_EQ(fp8_e4m3_to_f32(0x08), std::ldexp(1.0f, -6));  // smallest normal
  EXPECT_TRUE(std::isnan(fp8_e4m3_to_f32(0x7f)));
  EXPECT_TRUE(std::isnan(fp8_e4m3_to_f32(0xff)));
}

TEST(DtypeTest, ParsesSafetensorsNamesAndRejectsOthers) {
  DType dtype;
  EXPECT_TRUE(parse_dtype("BF16", &dtype));
  EXPECT_EQ(dtype, DType::BF16);
  EXPECT_TRUE(parse_dtype("F8_E4M3", &dtype));
  EXPECT_EQ(dtype, DType::F8_E4M3);
  EXPECT_FALSE(parse_dtype("F8_E5M2", &dtype));
  EXPECT_FALSE(parse_dtype("bf16", &dtype));
}

}  // namespace
}  // namespace deepmoe
