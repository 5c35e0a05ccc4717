// rope against the rotation formula in double, both pairings, both code paths.
#include <cmath>
#include <vector>

#include <gtest/gtest.h>

#include "backend/cpu/kernels.h"
#include "kernel_test_util.h"

namespace kiln::cpu {
namespace {

using testing::kUnit;
using testing::PathTest;

class RopeTest : public PathTest {};

TEST_P(RopeTest, RotatesTheRightPairsByPositionAngles) {
  std::mt19937 rng(21);
  const int64_t max_pos = 50;
  for (int64_t head_dim : {2, 8, 16, 24, 64, 128}) {
    const int64_t half = head_dim / 2;
    // Tables as the runtime builds them: theta_i = 10000^(-2i/head_dim) (HF LlamaRotaryEmbedding).
    std::vector<float> cos(max_pos * half), sin(max_pos * half);
    for (int64_t p = 0; p < max_pos; ++p) {
      for (int64_t i = 0; i < half; ++i) {
        const double angle = p * std::pow(10000.0, -2.0 * i / head_dim);
        cos[p * half + i] = static_cast<float>(std::cos(angle));
        sin[p * half + i] = static_cast<float>(std::sin(angle));
      }
    }
    for (bool interleaved : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "head_dim=" << head_dim << " interleaved=" << interleaved);
      const int64_t M = 4, num_heads = 3, col_offset = 5;
      const int64_t row_stride = col_offset + num_heads * head_dim + 2;
      const std::vector<int32_t> positions = {0, 49, 7, 7};
      std::vector<float> x = testing::random_floats(rng, M * row_stride, -2.0f, 2.0f);
      const std::vector<float> x0 = x;
      rope(x.data(), M, row_stride, col_offset, num_heads, head_dim, positions.data(), cos.data(),
           sin.data(), interleaved);
      for (int64_t m = 0; m < M; ++m) {
        // Columns outside the heads are untouched.
        for (int64_t c = 0; c < col_offset; ++c) ASSERT_EQ(x[m * row_stride + c], x0[m * row_stride + c]);
        for (int64_t c = col_offset + num_heads * head_dim; c < row_stride; ++c)
          ASSERT_EQ(x[m * row_stride + c], x0[m * row_stride + c]);
        for (int64_t h = 0; h < num_heads; ++h) {
          const int64_t base = m * row_stride + col_offset + h * head_dim;
          for (int64_t i = 0; i < half; ++i) {
            const int64_t ia = interleaved ? base + 2 * i : base + i;
            const int64_t ib = interleaved ? base + 2 * i + 1 : base + i + half;
            const double c = cos[positions[m] * half + i], s = sin[positions[m] * half + i];
            const double a = x0[ia], b = x0[ib];
            // Two products and a sum (or one fused): at most 3 roundings relative to the sum of the
            // magnitudes of the two products.
            const double tol_a = 3 * kUnit * (std::fabs(a * c) + std::fabs(b * s)) + 1e-30;
            const double tol_b = 3 * kUnit * (std::fabs(b * c) + std::fabs(a * s)) + 1e-30;
            ASSERT_NEAR(x[ia], a * c - b * s, tol_a) << "m=" << m << " h=" << h << " i=" << i;
            ASSERT_NEAR(x[ib], b * c + a * s, tol_b) << "m=" << m << " h=" << h << " i=" << i;
          }
        }
      }
    }
  }
}

TEST_P(RopeTest, PositionZeroIsIdentity) {
  const int64_t head_dim = 16, half = 8;
  std::vector<float> cos(half, 1.0f), sin(half, 0.0f);
  std::vector<float> x(head_dim);
  for (int i = 0; i < head_dim; ++i) x[i] = static_cast<float>(i + 1);
  const std::vector<float> x0 = x;
  const int32_t pos = 0;
  rope(x.data(), 1, head_dim, 0, 1, head_dim, &pos, cos.data(), sin.data(), false);
  EXPECT_EQ(x, x0);
}

INSTANTIATE_TEST_SUITE_P(Paths, RopeTest, ::testing::ValuesIn(testing::available_paths()),
                         testing::path_name);

}  // namespace
}  // namespace kiln::cpu
