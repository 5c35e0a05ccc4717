// matmul_quant against a double-precision reference over the dequantized weights (common/quant.h's
// dequantize_row), on both code paths: int8 and int4, groups 16..K and per channel, F16 and F32
// scales, with and without mins, odd K (padding), decode (M <= 8) and prefill (M > 8) shapes,
// outliers, all-zero and constant rows, negative mins, bias and ldy > N.
#include <cmath>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "backend/cpu/kernels.h"
#include "common/quant.h"
#include "kernel_test_util.h"

namespace kiln::cpu {
namespace {

using testing::kUnit;
using testing::PathTest;

struct Case {
  int64_t M, K, N;
  QuantInfo info;
};

// Random weights with the rows the issue asks for: row 0 all zero, row 1 constant, row 2 with a
// large outlier, row 3 all negative (negative mins), the rest uniform.
std::vector<float> make_weights(std::mt19937& rng, int64_t N, int64_t K) {
  std::vector<float> w = testing::random_floats(rng, N * K, -0.5f, 0.5f);
  if (N > 0) std::fill(w.begin(), w.begin() + K, 0.0f);
  if (N > 1) std::fill(w.begin() + K, w.begin() + 2 * K, 0.3125f);
  if (N > 2) w[2 * K + K / 2] = 40.0f;
  if (N > 3)
    for (int64_t k = 0; k < K; ++k) w[3 * K + k] = -std::fabs(w[3 * K + k]) - 0.25f;
  return w;
}

void check_case(const Case& c, std::mt19937& rng, ThreadPool& pool, bool with_bias) {
  SCOPED_TRACE(::testing::Message() << "M=" << c.M << " K=" << c.K << " N=" << c.N << " bits=" << c.info.bits
                                    << " group=" << c.info.group_size << " scale=" << dtype_name(c.info.scale_dtype)
                                    << " min=" << c.info.has_min << " bias=" << with_bias);
  const std::vector<float> w = make_weights(rng, c.N, c.K);
  const QuantizedMatrix q = quantize_rtn(w.data(), c.N, c.K, c.info);
  const QuantMatrixView view = q.view();
  std::vector<float> deq(c.N * c.K);
  for (int64_t n = 0; n < c.N; ++n) dequantize_row(view, n, deq.data() + n * c.K);
  const std::vector<float> x = testing::random_floats(rng, c.M * c.K);
  const std::vector<float> bias = testing::random_floats(rng, c.N);
  const int64_t ldy = c.N + 2;
  const float sentinel = -777.0f;
  std::vector<float> y(c.M * ldy, sentinel);
  matmul_quant(x.data(), c.M, c.K, view, with_bias ? bias.data() : nullptr, y.data(), ldy, pool);
  const int64_t groups = quant_groups(c.info, c.K);
  for (int64_t m = 0; m < c.M; ++m) {
    for (int64_t n = 0; n < c.N; ++n) {
      double exact = with_bias ? bias[n] : 0.0, magnitude = with_bias ? std::fabs(bias[n]) : 0.0;
      for (int64_t k = 0; k < c.K; ++k) {
        const int64_t g = k / c.info.group_size;
        exact += static_cast<double>(x[m * c.K + k]) * deq[n * c.K + k];
        magnitude += std::fabs(x[m * c.K + k]) *
                     (std::fabs(quant_scale(view, n, g) * quant_code(view, n, k)) + std::fabs(quant_min(view, n, g)));
      }
      // The kernel sums scale * (Σ x q) per group and min * Σ x: f32 error <= gamma_n * Σ|terms|.
      const double tol = 2.0 * static_cast<double>(c.K + groups + 4) * kUnit * magnitude + 1e-30;
      ASSERT_NEAR(y[m * ldy + n], exact, tol) << "m=" << m << " n=" << n;
    }
    for (int64_t n = c.N; n < ldy; ++n) ASSERT_EQ(y[m * ldy + n], sentinel);
  }
}

class MatmulQuantTest : public PathTest {};

TEST_P(MatmulQuantTest, MatchesDoubleReferenceOverDequantizedWeights) {
  const QuantInfo int8_channel{8, 1 << 30, DType::F32, false};
  const QuantInfo int8_g32_min{8, 32, DType::F16, true};
  const QuantInfo int8_g16{8, 16, DType::F32, false};
  const QuantInfo int4_g32{4, 32, DType::F16, true};
  const QuantInfo int4_g64_f32{4, 64, DType::F32, true};
  const QuantInfo int4_g128{4, 128, DType::F16, true};
  std::vector<Case> cases;
  for (const QuantInfo& info : {int8_channel, int8_g32_min, int8_g16, int4_g32, int4_g64_f32, int4_g128}) {
    for (const auto& [M, K, N] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
             {1, 32, 1}, {1, 64, 7}, {1, 172, 13}, {2, 100, 9}, {3, 256, 17}, {4, 288, 5}, {5, 160, 11},
             {8, 64, 31}, {9, 172, 13}, {33, 256, 40}, {1, 4128, 6}, {64, 96, 70}}) {
      QuantInfo q = info;
      if (q.group_size > K) q.group_size = K;  // per channel, or a group wider than K becomes K
      cases.push_back(Case{M, K, N, q});
    }
  }
  std::mt19937 rng(99);
  for (int threads : {1, 3}) {
    ThreadPool pool(threads);
    for (const Case& c : cases) {
      check_case(c, rng, pool, false);
      check_case(c, rng, pool, true);
    }
  }
}

TEST_P(MatmulQuantTest, ThreadCountDoesNotChangeResult) {
  std::mt19937 rng(5);
  const int64_t M = 2, K = 512, N = 300;
  const std::vector<float> w = testing::random_floats(rng, N * K);
  const QuantizedMatrix q = quantize_rtn(w.data(), N, K, QuantInfo{4, 128, DType::F16, true});
  const std::vector<float> x = testing::random_floats(rng, M * K);
  std::vector<float> y1(M * N), y4(M * N);
  ThreadPool one(1), four(4);
  matmul_quant(x.data(), M, K, q.view(), nullptr, y1.data(), N, one);
  matmul_quant(x.data(), M, K, q.view(), nullptr, y4.data(), N, four);
  EXPECT_EQ(y1, y4);
}

// W8A8: the activation codes are quantize_activation_row's exactly (both paths round the same way),
// so the reference is the exact integer dot product times the two scales.
TEST_P(MatmulQuantTest, W8A8MatchesIntegerReference) {
  std::mt19937 rng(17);
  ThreadPool pool(3);
  for (const auto& [M, K, N] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {1, 32, 3}, {1, 172, 13}, {3, 100, 9}, {4, 256, 17}, {5, 576, 31}, {9, 4128, 7}, {64, 96, 40}}) {
    for (float act_scale : {0.0f, 0.01f}) {
      SCOPED_TRACE(::testing::Message() << "M=" << M << " K=" << K << " N=" << N << " act_scale=" << act_scale);
      const std::vector<float> w = make_weights(rng, N, K);
      QuantizedMatrix q = quantize_rtn(w.data(), N, K, QuantInfo{8, K, DType::F32, false});
      q.info.act_bits = 8;
      q.info.act_scale = act_scale;
      std::vector<float> x = testing::random_floats(rng, M * K);
      if (M > 1) std::fill(x.begin() + K, x.begin() + 2 * K, 0.0f);  // an all-zero row
      x[0] = 9.0f;                                                  // an outlier (clamps under the static scale)
      const std::vector<float> bias = testing::random_floats(rng, N);
      std::vector<float> y(M * N, -1.0f);
      matmul_quant(x.data(), M, K, q.view(), bias.data(), y.data(), N, pool);
      std::vector<int8_t> xq(K);
      for (int64_t m = 0; m < M; ++m) {
        const double xs = quantize_activation_row(x.data() + m * K, K, act_scale, xq.data());
        for (int64_t n = 0; n < N; ++n) {
          int64_t dot = 0;
          for (int64_t k = 0; k < K; ++k) dot += static_cast<int64_t>(xq[k]) * quant_code(q.view(), n, k);
          const double exact = static_cast<double>(dot) * xs * quant_scale(q.view(), n, 0) + bias[n];
          const double tol = 8 * kUnit * (std::fabs(static_cast<double>(dot) * xs * quant_scale(q.view(), n, 0)) +
                                          std::fabs(bias[n])) + 1e-30;
          ASSERT_NEAR(y[m * N + n], exact, tol) << "m=" << m << " n=" << n;
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Paths, MatmulQuantTest, ::testing::ValuesIn(testing::available_paths()),
                         testing::path_name);

}  // namespace
}  // namespace kiln::cpu
