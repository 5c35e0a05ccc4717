// matmul_quant against a double-precision reference over the dequantized weights (common/quant.h's
// dequantize_row), on every ISA level: int8 and int4, groups 16..K and per channel, F16 and F32
// scales, with and without mins, odd K (padding), decode (M <= 8) and prefill (M > 8) shapes,
// outliers, all-zero and constant rows, negative mins, bias and ldy > N.
#include <cmath>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "backend/cpu/isa.h"
#include "backend/cpu/kernels.h"
#include "backend/cpu/matmul_internal.h"
#include "backend/cpu/matmul_quant_internal.h"
#include "common/dtype.h"
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

// The decode path these tests pin, whatever KILN_CPU_QUANT_ACT says: f32 activations (the default) or
// the opt-in int8 activations of int4 weights.
struct ActivationMode {
  explicit ActivationMode(bool int8) { set_quant_int8_activations(int8); }
  ~ActivationMode() { reset_quant_int8_activations(); }
};

class MatmulQuantTest : public PathTest {};

// Every layout the decode kernels specialize (AVX-512: int8 groups of 16 / 32 / any even count of 16s
// / per channel, int4 groups of 32 / 64 / multiples of 128 / per channel; the rest take the AVX2
// kernels), every M of decode and a few of prefill, and K whose last 128-code chunk holds 1, 2, 3 or
// 4 blocks, with and without padding in the last block.
TEST_P(MatmulQuantTest, MatchesDoubleReferenceOverDequantizedWeights) {
  const ActivationMode f32(false);
  const QuantInfo int8_channel{8, 1 << 30, DType::F32, false};
  const QuantInfo int8_g32_min{8, 32, DType::F16, true};
  const QuantInfo int8_g16{8, 16, DType::F32, false};
  const QuantInfo int8_g48_min{8, 48, DType::F32, true};  // odd count of 16s: the AVX2 kernel on avx512
  const QuantInfo int8_g64{8, 64, DType::F16, false};
  const QuantInfo int4_g32{4, 32, DType::F16, true};
  const QuantInfo int4_g64_f32{4, 64, DType::F32, true};
  const QuantInfo int4_g96_f32{4, 96, DType::F32, true};  // not a multiple of 128: the AVX2 kernel on avx512
  const QuantInfo int4_g128{4, 128, DType::F16, true};
  const QuantInfo int4_g256{4, 256, DType::F16, true};
  const QuantInfo int4_channel{4, 1 << 30, DType::F16, true};
  std::vector<Case> cases;
  for (const QuantInfo& info : {int8_channel, int8_g32_min, int8_g16, int8_g48_min, int8_g64, int4_g32, int4_g64_f32,
                                int4_g96_f32, int4_g128, int4_g256, int4_channel}) {
    for (const auto& [M, K, N] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
             {1, 32, 1},   {1, 64, 7},   {1, 172, 13}, {2, 100, 9},  {3, 256, 17}, {4, 288, 5},
             {5, 160, 11}, {6, 352, 9},  {7, 224, 5},  {8, 64, 31},  {1, 96, 3},   {1, 352, 4},
             {1, 576, 33}, {2, 1536, 7}, {9, 172, 13}, {33, 256, 40}, {1, 4128, 6}, {64, 96, 70}}) {
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

// A BF16 engine's prefill (bf16_prefill, avx512 with AVX512_BF16): weights dequantized then rounded to
// BF16, activations rounded to BF16, products exact in f32 (VDPBF16PS) and f32 sums; the reference is
// that arithmetic in double. Other levels, and decode shapes, ignore the flag: exactly the f32 result.
TEST_P(MatmulQuantTest, Bf16PrefillIsBf16ArithmeticOverDequantizedWeights) {
  const ActivationMode f32(false);
  const bool bf16_path = GetParam() == testing::Path::Avx512 && cpu_features().avx512_bf16;
  std::mt19937 rng(7);
  for (int threads : {1, 3}) {
    ThreadPool pool(threads);
    for (const QuantInfo& info : {QuantInfo{8, 1 << 30, DType::F32, false}, QuantInfo{8, 32, DType::F16, false},
                                  QuantInfo{4, 32, DType::F16, true}, QuantInfo{4, 128, DType::F16, true}}) {
      for (const auto& [M, K, N] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
               {9, 64, 7}, {33, 576, 200}, {64, 172, 65}, {17, 1536, 130}, {4, 256, 9}}) {
        QuantInfo qi = info;
        if (qi.group_size > K) qi.group_size = K;
        SCOPED_TRACE(::testing::Message() << "M=" << M << " K=" << K << " N=" << N << " bits=" << qi.bits
                                          << " group=" << qi.group_size << " threads=" << threads);
        const std::vector<float> w = make_weights(rng, N, K);
        const QuantizedMatrix q = quantize_rtn(w.data(), N, K, qi);
        std::vector<float> deq(N * K);
        for (int64_t n = 0; n < N; ++n) dequantize_row(q.view(), n, deq.data() + n * K);
        const std::vector<float> x = testing::random_floats(rng, M * K);
        const std::vector<float> bias = testing::random_floats(rng, N);
        std::vector<float> y(M * (N + 1), -777.0f), y32(M * (N + 1), -777.0f);
        matmul_quant(x.data(), M, K, q.view(), bias.data(), y.data(), N + 1, pool, /*bf16_prefill=*/true);
        matmul_quant(x.data(), M, K, q.view(), bias.data(), y32.data(), N + 1, pool, /*bf16_prefill=*/false);
        const bool bf16 = bf16_path && M > kStreamMaxRows;
        for (int64_t m = 0; m < M; ++m) {
          for (int64_t n = 0; n < N; ++n) {
            double exact = bias[n], magnitude = std::fabs(bias[n]);
            for (int64_t k = 0; k < K; ++k) {
              const double a = bf16_to_f32(f32_to_bf16(x[m * K + k])), b = bf16_to_f32(f32_to_bf16(deq[n * K + k]));
              exact += a * b;
              magnitude += std::fabs(a * b);
            }
            const float got = y[m * (N + 1) + n];
            if (bf16) {
              ASSERT_NEAR(got, exact, 2.0 * (K + 4) * kUnit * magnitude + 1e-30) << "m=" << m << " n=" << n;
            } else {
              ASSERT_EQ(got, y32[m * (N + 1) + n]) << "m=" << m << " n=" << n;
            }
          }
          ASSERT_EQ(y[m * (N + 1) + N], -777.0f);
        }
      }
    }
  }
}

// The opt-in integer decode of int4 weights (KILN_CPU_QUANT_ACT=int8; avx512 with VNNI): activations
// rounded per block of 32 by quantize_activation_row, so the reference is the exact integer dot product of each
// block times its two scales, plus the exact min term over the float activations.
void check_int8_activation_case(const Case& c, std::mt19937& rng, ThreadPool& pool, bool with_bias) {
  SCOPED_TRACE(::testing::Message() << "M=" << c.M << " K=" << c.K << " N=" << c.N << " bits=" << c.info.bits
                                    << " group=" << c.info.group_size << " scale=" << dtype_name(c.info.scale_dtype)
                                    << " min=" << c.info.has_min << " bias=" << with_bias);
  const std::vector<float> w = make_weights(rng, c.N, c.K);
  const QuantizedMatrix q = quantize_rtn(w.data(), c.N, c.K, c.info);
  const QuantMatrixView view = q.view();
  std::vector<float> x = testing::random_floats(rng, c.M * c.K);
  x[0] = 9.0f;  // an outlier: its block's other codes are small
  if (c.M > 1) std::fill(x.begin() + c.K, x.begin() + std::min<int64_t>(2 * c.K, c.K + 40), 0.0f);  // all-zero blocks
  const std::vector<float> bias = testing::random_floats(rng, c.N);
  const int64_t ldy = c.N + 2;
  const float sentinel = -777.0f;
  std::vector<float> y(c.M * ldy, sentinel);
  matmul_quant(x.data(), c.M, c.K, view, with_bias ? bias.data() : nullptr, y.data(), ldy, pool);
  const int64_t blocks = (c.K + kQuantBlock - 1) / kQuantBlock, groups = quant_groups(c.info, c.K);
  std::vector<int8_t> xq(blocks * kQuantBlock);
  std::vector<double> xd(blocks);
  for (int64_t m = 0; m < c.M; ++m) {
    for (int64_t b = 0; b < blocks; ++b)
      xd[b] = quantize_activation_row(x.data() + m * c.K + b * kQuantBlock, std::min(kQuantBlock, c.K - b * kQuantBlock),
                                      0.0f, xq.data() + b * kQuantBlock);
    for (int64_t n = 0; n < c.N; ++n) {
      double exact = with_bias ? bias[n] : 0.0, magnitude = with_bias ? std::fabs(bias[n]) : 0.0;
      for (int64_t b = 0; b < blocks; ++b) {
        const int64_t g = b * kQuantBlock / c.info.group_size;
        int64_t dot = 0, dot_abs = 0;
        for (int64_t k = b * kQuantBlock; k < std::min(c.K, (b + 1) * kQuantBlock); ++k) {
          dot += static_cast<int64_t>(xq[k]) * quant_code(view, n, k);
          dot_abs += std::abs(static_cast<int64_t>(xq[k]) * quant_code(view, n, k));
        }
        exact += static_cast<double>(quant_scale(view, n, g)) * xd[b] * static_cast<double>(dot);
        magnitude += std::fabs(quant_scale(view, n, g)) * xd[b] * static_cast<double>(dot_abs);
      }
      for (int64_t k = 0; k < c.K; ++k) {
        const double mn = quant_min(view, n, k / c.info.group_size);
        exact += mn * x[m * c.K + k];
        magnitude += std::fabs(mn * x[m * c.K + k]);
      }
      const double tol = 2.0 * static_cast<double>(c.K + groups + 4) * kUnit * magnitude + 1e-30;
      ASSERT_NEAR(y[m * ldy + n], exact, tol) << "m=" << m << " n=" << n;
    }
    for (int64_t n = c.N; n < ldy; ++n) ASSERT_EQ(y[m * ldy + n], sentinel);
  }
}

TEST_P(MatmulQuantTest, Int8ActivationsMatchIntegerReference) {
  const ActivationMode int8(true);
  // Layouts it leaves to the f32 path (which the test above covers): int8 weights, int4 groups of 96.
  EXPECT_FALSE(quant_dot_supports(QuantInfo{8, 32, DType::F16, false}, 576));
  EXPECT_FALSE(quant_dot_supports(QuantInfo{8, 576, DType::F32, false}, 576));
  EXPECT_FALSE(quant_dot_supports(QuantInfo{4, 96, DType::F32, true}, 576));
  const QuantInfo layouts[] = {{4, 32, DType::F16, true}, {4, 64, DType::F32, true}, {4, 128, DType::F16, true},
                               {4, 256, DType::F16, true}, {4, 1 << 30, DType::F16, true}};
  std::mt19937 rng(23);
  int checked = 0;
  for (int threads : {1, 3}) {
    ThreadPool pool(threads);
    for (const QuantInfo& info : layouts) {
      for (const auto& [M, K, N] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
               {1, 32, 3},  {1, 64, 7},   {2, 96, 5},    {3, 172, 13}, {4, 288, 9},  {5, 352, 4},
               {6, 224, 7}, {7, 160, 11}, {8, 256, 31},  {1, 576, 33}, {2, 1536, 7}, {1, 4128, 5}}) {
        QuantInfo q = info;
        if (q.group_size > K) q.group_size = K;
        if (!quant_dot_supports(q, K)) continue;  // below avx512 + VNNI
        check_int8_activation_case(Case{M, K, N, q}, rng, pool, threads == 1);
        ++checked;
      }
    }
  }
  if (checked == 0) GTEST_SKIP() << "no VNNI integer path at this level";
}

TEST_P(MatmulQuantTest, ThreadCountDoesNotChangeResult) {
  const ActivationMode f32(false);
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
