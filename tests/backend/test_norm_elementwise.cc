// rms_norm, add, swiglu and embedding against plain double-precision references, both code paths.
#include <cmath>
#include <vector>

#include <gtest/gtest.h>

#include "backend/cpu/kernels.h"
#include "kernel_test_util.h"

namespace kiln::cpu {
namespace {

using testing::kUnit;
using testing::PathTest;

class NormElementwiseTest : public PathTest {};

TEST_P(NormElementwiseTest, RmsNormMatchesHfFormula) {
  std::mt19937 rng(11);
  for (int64_t D : {1, 7, 8, 31, 64, 100, 768}) {
    for (int64_t M : {1, 3}) {
      for (bool in_place : {false, true}) {
        SCOPED_TRACE(::testing::Message() << "D=" << D << " M=" << M << " in_place=" << in_place);
        std::vector<float> x = testing::random_floats(rng, M * D, -3.0f, 3.0f);
        const std::vector<float> weight = testing::random_floats(rng, D, 0.5f, 1.5f);
        const std::vector<float> x_copy = x;
        std::vector<float> y(M * D);
        const float eps = 1e-5f;
        float* out = in_place ? x.data() : y.data();
        rms_norm(x.data(), weight.data(), M, D, eps, out);
        for (int64_t m = 0; m < M; ++m) {
          double sum_sq = 0;
          for (int64_t d = 0; d < D; ++d) sum_sq += static_cast<double>(x_copy[m * D + d]) * x_copy[m * D + d];
          const double inv = 1.0 / std::sqrt(sum_sq / D + eps);
          for (int64_t d = 0; d < D; ++d) {
            const double exact = weight[d] * (x_copy[m * D + d] * inv);
            // Sum of D non-negative squares: relative error <= gamma_D; then a divide, add, sqrt,
            // reciprocal and two multiplies add a few more roundings.
            const double tol = (D + 8) * kUnit * std::fabs(exact) + 1e-30;
            ASSERT_NEAR(out[m * D + d], exact, tol) << "m=" << m << " d=" << d;
          }
        }
      }
    }
  }
}

TEST_P(NormElementwiseTest, AddIsExactFloatAddition) {
  std::mt19937 rng(12);
  for (int64_t n : {1, 5, 8, 19, 1000}) {
    std::vector<float> x = testing::random_floats(rng, n);
    const std::vector<float> r = testing::random_floats(rng, n);
    const std::vector<float> x0 = x;
    add(x.data(), r.data(), 1, n);
    // One correctly rounded f32 addition per element on every path: results are bitwise equal.
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(x[i], x0[i] + r[i]) << i;
  }
  std::vector<float> x = {1, 2, 3, 4, 5, 6};
  const std::vector<float> r = {10, 20, 30, 40, 50, 60};
  add(x.data(), r.data(), 2, 3);
  EXPECT_EQ(x, (std::vector<float>{11, 22, 33, 44, 55, 66}));
}

TEST_P(NormElementwiseTest, SwigluMatchesSiluTimesUp) {
  std::mt19937 rng(13);
  for (int64_t F : {1, 3, 8, 17, 256}) {
    for (int64_t M : {1, 4}) {
      std::vector<float> gate_up = testing::random_floats(rng, M * 2 * F, -10.0f, 10.0f);
      // Extremes: exp overflow/underflow territory must still give silu(g) ~ g or ~ 0.
      const float extremes[] = {-100.0f, 100.0f, -30.0f, 30.0f, 0.0f, -88.0f, 89.0f};
      for (size_t i = 0; i < std::size(extremes) && static_cast<int64_t>(i) < F; ++i) gate_up[i] = extremes[i];
      std::vector<float> out(M * F);
      swiglu(gate_up.data(), M, F, out.data());
      for (int64_t m = 0; m < M; ++m) {
        for (int64_t f = 0; f < F; ++f) {
          const double g = gate_up[m * 2 * F + f], up = gate_up[m * 2 * F + F + f];
          const double exact = g / (1.0 + std::exp(-g)) * up;
          // exp is accurate to a few ulp (Cephes polynomial on AVX2, libm on scalar), followed by an
          // add, a divide and a multiply: 8 ulp of the result. The absolute floor covers g < -87,
          // where f32 exp(-g) saturates and silu is < 1e-36 anyway.
          const double tol = 8 * kUnit * std::fabs(exact) + 1e-35;
          ASSERT_NEAR(out[m * F + f], exact, tol) << "F=" << F << " m=" << m << " g=" << g;
        }
      }
    }
  }
}

TEST_P(NormElementwiseTest, EmbeddingGathersRowsForAllDtypes) {
  std::mt19937 rng(14);
  const int64_t V = 37;
  for (int64_t D : {1, 8, 13, 64}) {
    const std::vector<float> raw = testing::random_floats(rng, V * D, -4.0f, 4.0f);
    std::vector<float> f32 = raw;
    std::vector<uint16_t> f16(V * D), bf16(V * D);
    for (int64_t i = 0; i < V * D; ++i) {
      f16[i] = f32_to_f16(raw[i]);
      bf16[i] = f32_to_bf16(raw[i]);
    }
    const std::vector<int32_t> ids = {0, 36, 5, 5, 17};
    const int64_t M = static_cast<int64_t>(ids.size());
    std::vector<float> out(M * D);
    // Widening F16/BF16 to f32 is exact, so every element must match the scalar conversion exactly.
    embedding(ids.data(), M, f32.data(), DType::F32, D, out.data());
    for (int64_t m = 0; m < M; ++m)
      for (int64_t d = 0; d < D; ++d) ASSERT_EQ(out[m * D + d], f32[ids[m] * D + d]);
    embedding(ids.data(), M, f16.data(), DType::F16, D, out.data());
    for (int64_t m = 0; m < M; ++m)
      for (int64_t d = 0; d < D; ++d) ASSERT_EQ(out[m * D + d], f16_to_f32(f16[ids[m] * D + d]));
    embedding(ids.data(), M, bf16.data(), DType::BF16, D, out.data());
    for (int64_t m = 0; m < M; ++m)
      for (int64_t d = 0; d < D; ++d) ASSERT_EQ(out[m * D + d], bf16_to_f32(bf16[ids[m] * D + d]));
  }
}

INSTANTIATE_TEST_SUITE_P(Paths, NormElementwiseTest, ::testing::ValuesIn(testing::available_paths()),
                         testing::path_name);

}  // namespace
}  // namespace kiln::cpu
