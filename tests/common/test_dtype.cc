#include <cmath>

#include <gtest/gtest.h>

#include "common/dtype.h"

namespace kiln {
namespace {

// Reference: the half value of bits h computed in double from the IEEE 754 binary16 definition.
double half_reference(uint16_t h) {
  const int sign = (h & 0x8000) ? -1 : 1;
  const int exponent = (h >> 10) & 0x1f;
  const int mantissa = h & 0x3ff;
  if (exponent == 0) return sign * std::ldexp(mantissa, -24);
  if (exponent == 31) return mantissa ? NAN : sign * INFINITY;
  return sign * std::ldexp(1024 + mantissa, exponent - 25);
}

TEST(DType, HalfToFloatMatchesDefinitionForAllBitPatterns) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const double expected = half_reference(static_cast<uint16_t>(h));
    const float got = f16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(expected)) {
      EXPECT_TRUE(std::isnan(got)) << h;
    } else {
      EXPECT_EQ(static_cast<double>(got), expected) << h;
    }
  }
}

TEST(DType, FloatToHalfRoundTripsAndRoundsToNearest) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = f16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    EXPECT_EQ(f32_to_f16(f), h) << h;
  }
  // Between two halves the nearer one wins; ties go to the even mantissa.
  for (uint32_t h = 0; h < 0x7bff; ++h) {
    const double a = half_reference(static_cast<uint16_t>(h));
    const double b = half_reference(static_cast<uint16_t>(h + 1));
    const float mid = static_cast<float>((a + b) / 2);
    const uint16_t expect_mid = (h & 1) ? static_cast<uint16_t>(h + 1) : static_cast<uint16_t>(h);
    if (static_cast<double>(mid) == (a + b) / 2) {
      EXPECT_EQ(f32_to_f16(mid), expect_mid) << h;
    }
    const float near_a = static_cast<float>(a + (b - a) * 0.25);
    EXPECT_EQ(f32_to_f16(near_a), h) << h;
  }
  EXPECT_EQ(f32_to_f16(1e6f), 0x7c00);
  EXPECT_EQ(f32_to_f16(-1e6f), 0xfc00);
}

TEST(DType, Bfloat16RoundsToNearestEven) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(bf16_to_f32(0x3f80), 1.0f);
  // 1 + 2^-8 is exactly between 1 and 1 + 2^-7: ties to even (1.0).
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
}

}  // namespace
}  // namespace kiln
