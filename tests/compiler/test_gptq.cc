// GPTQ (compiler/gptq.h) against an independent float64 formulation and against round to nearest.
//
// The reference is GPTQ as first written (the optimal-brain-surgeon recursion with the inverse Hessian
// itself: quantize column j, spread (w_j - q_j) / Hinv_jj * Hinv_j: onto the later columns, then remove
// j from Hinv by a Schur-complement downdate), in double, with H^-1 from Gauss-Jordan elimination. kiln's
// implementation uses the Cholesky factor of H^-1 instead (one factorization, no downdates) and floats
// for the row updates; the two are the same algorithm, so their codes agree except where float rounding
// flips a code at a rounding tie and the difference carries on. The checks:
//   - on inputs with correlated channels, the codes agree with the reference (>= 97%) and the output
//     error on held-out inputs from the same distribution is within 2% of the reference's;
//   - there, GPTQ's output error is well below round to nearest's (int8 per channel and int4 g32);
//   - on inputs whose channels are uncorrelated (H diagonal) GPTQ has nothing to move and equals round
//     to nearest code for code.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "backend/cpu/thread_pool.h"
#include "common/quant.h"
#include "compiler/gptq.h"

namespace kiln {
namespace {

// x = z A + outlier channels: rows of correlated inputs, as the channels of an LLM's activations are.
std::vector<float> correlated_inputs(std::mt19937& rng, int64_t M, int64_t K, const std::vector<float>& mix) {
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::vector<float> x(M * K, 0.0f);
  for (int64_t m = 0; m < M; ++m) {
    std::vector<float> z(K);
    for (float& v : z) v = n(rng);
    for (int64_t k = 0; k < K; ++k) {
      double s = 0;
      for (int64_t j = 0; j < K; ++j) s += z[j] * mix[j * K + k];
      x[m * K + k] = static_cast<float>(s) * (k % 17 == 3 ? 8.0f : 1.0f);
    }
  }
  return x;
}

std::vector<float> mixing(std::mt19937& rng, int64_t K) {
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::vector<float> a(K * K);
  for (int64_t j = 0; j < K; ++j)
    for (int64_t k = 0; k < K; ++k) a[j * K + k] = (j == k ? 1.0f : 0.0f) + 0.35f * n(rng) / std::sqrt(float(K)) * 3.0f;
  return a;
}

std::vector<float> random_weights(std::mt19937& rng, int64_t N, int64_t K) {
  std::normal_distribution<float> n(0.0f, 0.02f);
  std::vector<float> w(N * K);
  for (float& v : w) v = n(rng);
  return w;
}

// ||X W^T - X Q^T||^2 / ||X W^T||^2.
double output_error(const std::vector<float>& x, int64_t M, const std::vector<float>& w, const QuantizedMatrix& q) {
  const int64_t N = q.rows, K = q.cols;
  std::vector<float> deq(K);
  double err = 0, ref = 0;
  for (int64_t n = 0; n < N; ++n) {
    dequantize_row(q.view(), n, deq.data());
    for (int64_t m = 0; m < M; ++m) {
      double a = 0, b = 0;
      for (int64_t k = 0; k < K; ++k) a += double(x[m * K + k]) * w[n * K + k], b += double(x[m * K + k]) * deq[k];
      err += (a - b) * (a - b), ref += a * a;
    }
  }
  return err / ref;
}

// GPTQ as the OBS recursion on H^-1 itself (float64), the same layout rules as kiln's: damping 1% of
// mean(diag H), act order with one group per row, group ranges fixed at each group's first column.
QuantizedMatrix reference_gptq(const std::vector<float>& w, int64_t N, int64_t K, const QuantInfo& info,
                               const std::vector<float>& x, int64_t M) {
  std::vector<double> h(K * K, 0.0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t i = 0; i < K; ++i)
      for (int64_t j = 0; j < K; ++j) h[i * K + j] += double(x[m * K + i]) * x[m * K + j];
  double mean = 0;
  for (int64_t k = 0; k < K; ++k) mean += h[k * K + k] / K;
  for (int64_t k = 0; k < K; ++k) h[k * K + k] += 0.01 * mean;
  const int64_t groups = quant_groups(info, K);
  std::vector<int64_t> perm(K);
  std::iota(perm.begin(), perm.end(), 0);
  if (groups == 1) std::stable_sort(perm.begin(), perm.end(), [&](int64_t a, int64_t b) { return h[a * K + a] > h[b * K + b]; });
  // Gauss-Jordan inverse of H in quantization order.
  std::vector<double> a(K * 2 * K, 0.0);
  for (int64_t i = 0; i < K; ++i) {
    for (int64_t j = 0; j < K; ++j) a[i * 2 * K + j] = h[perm[i] * K + perm[j]];
    a[i * 2 * K + K + i] = 1.0;
  }
  for (int64_t c = 0; c < K; ++c) {
    int64_t piv = c;
    for (int64_t r = c + 1; r < K; ++r)
      if (std::fabs(a[r * 2 * K + c]) > std::fabs(a[piv * 2 * K + c])) piv = r;
    for (int64_t j = 0; j < 2 * K; ++j) std::swap(a[c * 2 * K + j], a[piv * 2 * K + j]);
    const double d = a[c * 2 * K + c];
    for (int64_t j = 0; j < 2 * K; ++j) a[c * 2 * K + j] /= d;
    for (int64_t r = 0; r < K; ++r) {
      if (r == c) continue;
      const double f = a[r * 2 * K + c];
      for (int64_t j = 0; j < 2 * K; ++j) a[r * 2 * K + j] -= f * a[c * 2 * K + j];
    }
  }
  QuantizedMatrix q = make_quantized_matrix(N, K, info);
  for (int64_t n = 0; n < N; ++n) {
    std::vector<double> hinv(K * K);
    for (int64_t i = 0; i < K; ++i)
      for (int64_t j = 0; j < K; ++j) hinv[i * K + j] = a[i * 2 * K + K + j];
    std::vector<float> row(w.begin() + n * K, w.begin() + (n + 1) * K);
    std::vector<double> r(K);
    for (int64_t j = 0; j < K; ++j) r[j] = row[perm[j]];
    if (groups == 1) {
      float lo, hi;
      value_range(row.data(), 0, K, lo, hi);
      quantize_group(q, n, 0, row.data(), lo, hi);
    }
    for (int64_t j = 0; j < K; ++j) {
      const int64_t k = perm[j];
      if (groups > 1 && k % info.group_size == 0) {
        std::vector<float> cur(K);
        for (int64_t i = 0; i < K; ++i) cur[i] = static_cast<float>(r[i]);
        float lo, hi;
        value_range(cur.data(), k, std::min(K, k + info.group_size), lo, hi);
        quantize_group(q, n, k / info.group_size, cur.data(), lo, hi);
      }
      const double deq = quantize_element(q, n, k, static_cast<float>(r[j]));
      const double e = (r[j] - deq) / hinv[j * K + j];
      for (int64_t i = j + 1; i < K; ++i) r[i] -= e * hinv[j * K + i];
      // Remove j: Hinv -= Hinv[:, j] Hinv[j, :] / Hinv[j][j] (rows and columns after j are all that is read).
      const double hjj = hinv[j * K + j];
      for (int64_t i = j + 1; i < K; ++i)
        for (int64_t l = j + 1; l < K; ++l) hinv[i * K + l] -= hinv[i * K + j] * hinv[j * K + l] / hjj;
    }
  }
  return q;
}

double code_agreement(const QuantizedMatrix& a, const QuantizedMatrix& b) {
  int64_t same = 0;
  for (int64_t n = 0; n < a.rows; ++n)
    for (int64_t k = 0; k < a.cols; ++k) same += quant_code(a.view(), n, k) == quant_code(b.view(), n, k) ? 1 : 0;
  return double(same) / double(a.rows * a.cols);
}

TEST(Gptq, MatchesTheObsRecursionAndBeatsRoundToNearest) {
  cpu::ThreadPool pool(2);
  std::mt19937 rng(11);
  const int64_t N = 24, K = 96, M = 256;
  const std::vector<float> mix = mixing(rng, K);
  const std::vector<float> x = correlated_inputs(rng, M, K, mix), held_out = correlated_inputs(rng, 512, K, mix);
  const std::vector<float> w = random_weights(rng, N, K);
  for (const QuantInfo& info : {QuantInfo{8, K, DType::F32, false}, QuantInfo{4, 32, DType::F16, true},
                                QuantInfo{8, 32, DType::F16, true}}) {
    SCOPED_TRACE(quant_describe(info, K));
    Result<QuantizedMatrix> g = quantize_gptq(w.data(), N, K, info, x.data(), M, pool);
    ASSERT_TRUE(g.ok()) << g.error().message;
    const QuantizedMatrix ref = reference_gptq(w, N, K, info, x, M);
    const QuantizedMatrix rtn = quantize_rtn(w.data(), N, K, info);
    const double e_g = output_error(held_out, 512, w, *g), e_ref = output_error(held_out, 512, w, ref),
                 e_rtn = output_error(held_out, 512, w, rtn);
    std::printf("%s: relative output MSE gptq %.3e, reference %.3e, rtn %.3e; codes equal to the reference %.2f%%\n",
                quant_describe(info, K).c_str(), e_g, e_ref, e_rtn, 100 * code_agreement(*g, ref));
    EXPECT_GE(code_agreement(*g, ref), 0.97);
    EXPECT_NEAR(e_g / e_ref, 1.0, 0.02);
    EXPECT_LT(e_g, 0.75 * e_rtn);
  }
}

TEST(Gptq, UncorrelatedInputsGiveRoundToNearest) {
  cpu::ThreadPool pool(2);
  std::mt19937 rng(12);
  const int64_t N = 16, K = 64;
  // Row m of x is d_m e_m: H = X^T X is diagonal.
  std::vector<float> x(K * K, 0.0f);
  for (int64_t k = 0; k < K; ++k) x[k * K + k] = 0.5f + static_cast<float>(k % 7);
  const std::vector<float> w = random_weights(rng, N, K);
  for (const QuantInfo& info : {QuantInfo{8, K, DType::F32, false}, QuantInfo{4, 32, DType::F16, true}}) {
    Result<QuantizedMatrix> g = quantize_gptq(w.data(), N, K, info, x.data(), K, pool);
    ASSERT_TRUE(g.ok());
    const QuantizedMatrix rtn = quantize_rtn(w.data(), N, K, info);
    EXPECT_EQ(g->codes, rtn.codes);
    EXPECT_EQ(g->scales, rtn.scales);
    EXPECT_EQ(g->mins, rtn.mins);
  }
}

TEST(Gptq, NonFiniteInputsAreAnError) {
  cpu::ThreadPool pool(1);
  std::vector<float> w(8 * 32, 0.01f), x(4 * 32, 1.0f);
  x[5] = std::nanf("");
  const Result<QuantizedMatrix> g = quantize_gptq(w.data(), 8, 32, QuantInfo{8, 32, DType::F32, false}, x.data(), 4, pool);
  ASSERT_FALSE(g.ok());
  EXPECT_NE(g.error().message.find("positive definite"), std::string::npos);
}

}  // namespace
}  // namespace kiln
