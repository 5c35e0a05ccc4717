// common/quant.h: the layout (nibble order, padding), round-to-nearest error bounds, constant and
// zero groups, validation, bits per weight.
#include <cmath>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "common/quant.h"

namespace kiln {
namespace {

std::vector<float> random_row(std::mt19937& rng, int64_t n, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

TEST(QuantLayout, Int4NibblesFollowGgufQ4Order) {
  // Codes 0..15 then 15..0 in one 32-block: byte i = element i (low) | element i + 16 (high).
  QuantizedMatrix m = make_quantized_matrix(1, 32, QuantInfo{4, 32, DType::F32, true});
  std::vector<float> row(32);
  for (int i = 0; i < 32; ++i) row[i] = static_cast<float>(i < 16 ? i : 31 - i);
  quantize_group(m, 0, 0, row.data(), 0.0f, 15.0f);
  for (int i = 0; i < 16; ++i) EXPECT_EQ(m.codes[i], (15 - i) << 4 | i) << i;
  for (int k = 0; k < 32; ++k) EXPECT_EQ(quant_code(m.view(), 0, k), static_cast<int>(row[k]));
  std::vector<float> back(32);
  dequantize_row(m.view(), 0, back.data());
  EXPECT_EQ(back, row);
}

TEST(QuantLayout, PaddingAndSizes) {
  const QuantInfo q{4, 64, DType::F16, true};
  EXPECT_EQ(quant_padded_k(172), 192);
  EXPECT_EQ(quant_row_bytes(q, 172), 96);
  EXPECT_EQ(quant_groups(q, 172), 3);
  EXPECT_EQ(quant_row_bytes(QuantInfo{8, 172, DType::F32, false}, 172), 192);
  // 4 bits + 2 x 16 bits per 128 = 4.25; int8 per channel f32 over 4096 = 8.0078
  EXPECT_DOUBLE_EQ(quant_bits_per_weight(QuantInfo{4, 128, DType::F16, true}, 4096), 4.25);
  EXPECT_NEAR(quant_bits_per_weight(QuantInfo{8, 4096, DType::F32, false}, 4096), 8.0078125, 1e-12);
}

TEST(QuantRtn, ErrorWithinHalfAStep) {
  std::mt19937 rng(3);
  const int64_t N = 9, K = 300;
  std::vector<float> w = random_row(rng, N * K, -1.0f, 1.0f);
  w[5] = 30.0f;  // an outlier widens only its own group
  for (const QuantInfo& q : {QuantInfo{8, K, DType::F32, false}, QuantInfo{8, 32, DType::F16, true},
                             QuantInfo{4, 32, DType::F16, true}, QuantInfo{4, 128, DType::F32, true}}) {
    SCOPED_TRACE(quant_describe(q, K));
    const QuantizedMatrix m = quantize_rtn(w.data(), N, K, q);
    std::vector<float> back(K);
    for (int64_t n = 0; n < N; ++n) {
      dequantize_row(m.view(), n, back.data());
      for (int64_t k = 0; k < K; ++k) {
        const float scale = quant_scale(m.view(), n, k / q.group_size);
        // Half a step, plus the rounding of scale and min to F16 (at most 2^-11 relative each,
        // times the 255 or 15 steps the min is away from the far end of the range).
        const float f16 = q.scale_dtype == DType::F16 ? 4e-3f * (std::fabs(w[n * K + k]) + 2.0f * 31.0f) : 0.0f;
        ASSERT_LE(std::fabs(back[k] - w[n * K + k]), 0.5f * scale * 1.0001f + 1e-6f + f16)
            << "n=" << n << " k=" << k;
      }
    }
  }
}

TEST(QuantRtn, ZeroAndConstantGroupsAreExact) {
  const int64_t K = 64;
  std::vector<float> w(2 * K, 0.0f);
  for (int64_t k = 0; k < K; ++k) w[K + k] = -0.375f;  // exactly representable in F16
  for (const QuantInfo& q : {QuantInfo{8, K, DType::F32, false}, QuantInfo{4, 32, DType::F16, true}}) {
    const QuantizedMatrix m = quantize_rtn(w.data(), 2, K, q);
    std::vector<float> back(K);
    dequantize_row(m.view(), 0, back.data());
    for (float v : back) EXPECT_EQ(v, 0.0f);
    dequantize_row(m.view(), 1, back.data());
    for (float v : back) EXPECT_EQ(v, -0.375f);
  }
}

TEST(QuantValidate, RefusesBadLayouts) {
  EXPECT_TRUE(validate_quant(QuantInfo{4, 128, DType::F16, true}, 8, 4096, "w").ok());
  EXPECT_TRUE(validate_quant(QuantInfo{8, 172, DType::F32, false}, 8, 172, "w").ok());  // one group per row
  EXPECT_TRUE(validate_quant(QuantInfo{8, 16, DType::F32, false}, 8, 64, "w").ok());
  const auto bad = [](QuantInfo q) { return validate_quant(q, 8, 256, "layers.0.w").ok(); };
  EXPECT_FALSE(bad(QuantInfo{3, 32, DType::F16, true}));
  EXPECT_FALSE(bad(QuantInfo{4, 16, DType::F16, true}));   // int4 groups are whole blocks
  EXPECT_FALSE(bad(QuantInfo{4, 100, DType::F16, true}));
  EXPECT_FALSE(bad(QuantInfo{4, 32, DType::F16, false}));  // int4 needs mins
  EXPECT_FALSE(bad(QuantInfo{8, 0, DType::F16, false}));
  EXPECT_FALSE(bad(QuantInfo{8, 32, DType::BF16, false}));
  const Status s = validate_quant(QuantInfo{4, 48, DType::F16, true}, 8, 256, "layers.0.w");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message.find("layers.0.w"), std::string::npos);
}

}  // namespace
}  // namespace kiln
