// matmul against a plain double-precision reference, for all weight dtypes, both code paths,
// decode (M <= 8, streaming) and prefill (M > 8, panel) shapes, odd sizes, bias and ldy > N.
#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>

#include "backend/cpu/isa.h"
#include "backend/cpu/kernels.h"
#include "backend/cpu/matmul_internal.h"
#include "kernel_test_util.h"

namespace kiln::cpu {
namespace {

using testing::kUnit;
using testing::Path;
using testing::PathTest;

struct Shape {
  int64_t M, K, N;
};

// Weights stored in `dtype`, plus their exact f32 values (F16/BF16 -> f32 is exact) for the reference.
struct Weights {
  std::vector<uint8_t> bytes;
  std::vector<float> values;  // [N, K]
};

Weights make_weights(std::mt19937& rng, int64_t count, DType dtype) {
  Weights w;
  const std::vector<float> raw = testing::random_floats(rng, count);
  w.bytes.resize(count * dtype_size(dtype));
  w.values.resize(count);
  for (int64_t i = 0; i < count; ++i) {
    if (dtype == DType::F32) {
      reinterpret_cast<float*>(w.bytes.data())[i] = raw[i];
      w.values[i] = raw[i];
    } else if (dtype == DType::F16) {
      const uint16_t h = f32_to_f16(raw[i]);
      reinterpret_cast<uint16_t*>(w.bytes.data())[i] = h;
      w.values[i] = f16_to_f32(h);
    } else {
      const uint16_t b = f32_to_bf16(raw[i]);
      reinterpret_cast<uint16_t*>(w.bytes.data())[i] = b;
      w.values[i] = bf16_to_f32(b);
    }
  }
  return w;
}

class MatmulTest : public PathTest {};

TEST_P(MatmulTest, MatchesDoubleReferenceForAllDtypesAndShapes) {
  const std::vector<Shape> shapes = {
      {1, 1, 1},    {1, 7, 5},    {1, 8, 4},     {1, 768, 37},  {2, 13, 9},   {3, 64, 17},
      {4, 9, 3},    {5, 100, 50}, {8, 33, 12},   {9, 40, 13},   {16, 257, 31}, {64, 96, 70},
      {33, 17, 200}, {7, 1000, 1}, {1, 3000, 100},
      // AVX-512 line tails (16 / 32 elements), odd row counts for the 2-row stream tiles, and the
      // packed prefill: panels of 64 rows with a ragged last panel, 6-row x blocks with every
      // remainder, K blocks of 1024 with a ragged last block.
      {1, 15, 3},   {2, 31, 5},   {6, 33, 7},   {8, 47, 9},    {1, 65, 130},  {12, 16, 64},
      {13, 17, 65}, {17, 48, 129}, {11, 1025, 70}, {10, 2100, 20}, {9, 5, 1},
  };
  std::mt19937 rng(1234);
  for (int threads : {1, 3}) {
    ThreadPool pool(threads);
    for (DType dtype : {DType::F32, DType::F16, DType::BF16}) {
      for (const Shape& s : shapes) {
        for (bool with_bias : {false, true}) {
          SCOPED_TRACE(::testing::Message() << "M=" << s.M << " K=" << s.K << " N=" << s.N << " dtype="
                                            << dtype_name(dtype) << " bias=" << with_bias
                                            << " threads=" << threads);
          const std::vector<float> x = testing::random_floats(rng, s.M * s.K);
          const Weights w = make_weights(rng, s.N * s.K, dtype);
          const std::vector<float> bias = testing::random_floats(rng, s.N);
          // ldy > N: outputs land in a column slice; the columns beyond N must stay untouched.
          const int64_t ldy = s.N + 3;
          const float sentinel = 12345.0f;
          std::vector<float> y(s.M * ldy, sentinel);
          matmul(x.data(), s.M, s.K, w.bytes.data(), dtype, s.N, with_bias ? bias.data() : nullptr,
                 y.data(), ldy, pool);
          // BF16 prefill on AVX512_BF16 (VDPBF16PS) rounds the activations to BF16 first (documented
          // in matmul_avx512.cc); its reference uses those rounded activations, with the same bound.
          const bool bf16_activations = GetParam() == Path::Avx512 && dtype == DType::BF16 &&
                                        s.M > kStreamMaxRows && cpu_features().avx512_bf16;
          std::vector<float> xr = x;
          if (bf16_activations)
            for (float& v : xr) v = bf16_to_f32(f32_to_bf16(v));
          for (int64_t m = 0; m < s.M; ++m) {
            for (int64_t n = 0; n < s.N; ++n) {
              double exact = with_bias ? bias[n] : 0.0, magnitude = with_bias ? std::fabs(bias[n]) : 0.0;
              for (int64_t k = 0; k < s.K; ++k) {
                const double p = static_cast<double>(xr[m * s.K + k]) * w.values[n * s.K + k];
                exact += p;
                magnitude += std::fabs(p);
              }
              // Any f32 summation order of K+1 terms errs by at most gamma_{K+1} * sum|terms|
              // (Higham, Accuracy and Stability of Numerical Algorithms, eq. 3.5), gamma_n ~ n*u.
              const double tol = (s.K + 2) * kUnit * magnitude + 1e-30;
              ASSERT_NEAR(y[m * ldy + n], exact, tol) << "m=" << m << " n=" << n;
            }
            for (int64_t n = s.N; n < ldy; ++n) ASSERT_EQ(y[m * ldy + n], sentinel);
          }
        }
      }
    }
  }
}

TEST_P(MatmulTest, ZeroKGivesBias) {
  ThreadPool pool(2);
  const std::vector<float> bias = {1.5f, -2.0f, 3.25f};
  std::vector<float> y(2 * 3, 99.0f);
  const float unused = 0;
  matmul(&unused, 2, 0, &unused, DType::F32, 3, bias.data(), y.data(), 3, pool);
  for (int m = 0; m < 2; ++m)
    for (int n = 0; n < 3; ++n) EXPECT_EQ(y[m * 3 + n], bias[n]);
}

TEST_P(MatmulTest, ThreadCountDoesNotChangeResult) {
  // Each output is computed by exactly one thread with a fixed summation order, so results are
  // bitwise identical for any pool size.
  std::mt19937 rng(7);
  const int64_t M = 3, K = 300, N = 500;
  const std::vector<float> x = testing::random_floats(rng, M * K);
  const Weights w = make_weights(rng, N * K, DType::BF16);
  std::vector<float> y1(M * N), y4(M * N);
  ThreadPool one(1), four(4);
  matmul(x.data(), M, K, w.bytes.data(), DType::BF16, N, nullptr, y1.data(), N, one);
  matmul(x.data(), M, K, w.bytes.data(), DType::BF16, N, nullptr, y4.data(), N, four);
  EXPECT_EQ(y1, y4);
}

INSTANTIATE_TEST_SUITE_P(Paths, MatmulTest, ::testing::ValuesIn(testing::available_paths()),
                         testing::path_name);

TEST(CpuFeatures, ForceScalarTogglesThePath) {
  set_force_scalar(true);
  EXPECT_FALSE(using_avx2());
  EXPECT_EQ(active_isa(), Isa::kScalar);
  set_force_scalar(false);
  EXPECT_EQ(using_avx2(), cpu_has_avx2_fma());
}

TEST(CpuFeatures, IsaLimitCapsTheLevelAndNeverRaisesIt) {
  for (Isa limit : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
    set_isa_limit(limit);
    EXPECT_EQ(active_isa(), std::min(limit, best_isa()));
    EXPECT_EQ(using_avx512(), active_isa() == Isa::kAvx512);
  }
  reset_isa_limit();
  const CpuFeatures& f = cpu_features();
  EXPECT_EQ(best_isa(), f.avx512 ? Isa::kAvx512 : f.avx2 ? Isa::kAvx2 : Isa::kScalar);
  EXPECT_TRUE(!f.avx512_bf16 || f.avx512);
}

TEST(CpuFeatures, ParsesLevelNames) {
  EXPECT_EQ(parse_isa("scalar"), Isa::kScalar);
  EXPECT_EQ(parse_isa("avx2"), Isa::kAvx2);
  EXPECT_EQ(parse_isa("avx512"), Isa::kAvx512);
  EXPECT_FALSE(parse_isa("AVX512").has_value());
  EXPECT_FALSE(parse_isa("").has_value());
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) EXPECT_EQ(parse_isa(isa_name(isa)), isa);
  EXPECT_NE(isa_description().find(isa_name(active_isa())), std::string::npos);
}

}  // namespace
}  // namespace kiln::cpu
