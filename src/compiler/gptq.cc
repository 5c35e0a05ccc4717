#include "compiler/gptq.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "backend/cpu/kernels.h"

namespace kiln {

void quantize_group_clipped(QuantizedMatrix& m, int64_t n, int64_t g, const float* row,
                            const std::vector<double>& importance) {
  const QuantInfo& info = m.info;
  const int64_t k0 = g * info.group_size, k1 = std::min(m.cols, k0 + info.group_size);
  float lo, hi;
  value_range(row, k0, k1, lo, hi);
  double best = -1;
  float best_c = 1.0f;
  for (int step = 0; step <= 12; ++step) {
    const float c = 1.0f - 0.025f * static_cast<float>(step);
    quantize_group(m, n, g, row, lo * c, hi * c);
    const QuantMatrixView view = m.view();
    const float scale = quant_scale(view, n, g), min = quant_min(view, n, g);
    double err = 0;
    for (int64_t k = k0; k < k1; ++k) {
      const double d = row[k] - (scale * static_cast<float>(quant_code(view, n, k)) + min);
      err += importance[k] * d * d;
    }
    if (best < 0 || err < best) best = err, best_c = c;
  }
  quantize_group(m, n, g, row, lo * best_c, hi * best_c);
}

namespace {

// Lower Cholesky factor of the symmetric positive definite a [K, K] (row-major), in place below and on
// the diagonal. False when a pivot is not positive.
bool cholesky_lower(std::vector<double>& a, int64_t K, cpu::ThreadPool& pool) {
  for (int64_t j = 0; j < K; ++j) {
    double* rj = a.data() + j * K;
    double d = rj[j];
    for (int64_t k = 0; k < j; ++k) d -= rj[k] * rj[k];
    if (!(d > 0) || !std::isfinite(d)) return false;
    rj[j] = std::sqrt(d);
    const double inv = 1.0 / rj[j];
    pool.parallel_for(K - j - 1, 64, [&](int64_t begin, int64_t end) {
      for (int64_t i = j + 1 + begin; i < j + 1 + end; ++i) {
        double* ri = a.data() + i * K;
        double s = ri[j];
        for (int64_t k = 0; k < j; ++k) s -= ri[k] * rj[k];
        ri[j] = s * inv;
      }
    });
  }
  return true;
}

}  // namespace

Result<QuantizedMatrix> quantize_gptq(const float* w, int64_t N, int64_t K, const QuantInfo& info, const float* x,
                                      int64_t M, cpu::ThreadPool& pool, const GptqOptions& options) {
  // H = X^T X: the matmul y = a b^T with a = b = X^T [K, M].
  std::vector<float> xt(K * std::max<int64_t>(M, 1), 0.0f), hf(K * K, 0.0f);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) xt[k * M + m] = x[m * K + k];
  if (M > 0) cpu::matmul(xt.data(), K, M, xt.data(), DType::F32, K, nullptr, hf.data(), K, pool);
  std::vector<double> h(hf.begin(), hf.end());
  double mean_diag = 0;
  for (int64_t k = 0; k < K; ++k) mean_diag += h[k * K + k];
  mean_diag /= static_cast<double>(K);
  std::vector<double> diag(K);
  for (int64_t k = 0; k < K; ++k) {
    // No input reaches column k (X's column k is zero, so is H's row k): uncoupled, round to nearest.
    if (h[k * K + k] <= 0) h[k * K + k] = 1.0;
    h[k * K + k] += options.damp * (mean_diag > 0 ? mean_diag : 1.0);
    diag[k] = h[k * K + k];
  }
  const int64_t groups = quant_groups(info, K);
  std::vector<int64_t> perm(K);
  std::iota(perm.begin(), perm.end(), 0);
  if (options.act_order && groups == 1) {
    std::stable_sort(perm.begin(), perm.end(), [&](int64_t a, int64_t b) { return diag[a] > diag[b]; });
  }
  // U = upper Cholesky factor of Hp^-1 (Hp: H in quantization order) = J L^-1 J, L = chol(J Hp J), J the
  // order reversal: (J L^-1 J)^T (J L^-1 J) = J L^-T L^-1 J = (J L L^T J)^-1 = Hp^-1.
  std::vector<double> a(K * K);
  for (int64_t i = 0; i < K; ++i)
    for (int64_t j = 0; j < K; ++j) a[i * K + j] = h[perm[K - 1 - i] * K + perm[K - 1 - j]];
  if (!cholesky_lower(a, K, pool)) {
    return make_error("GPTQ: the damped Hessian is not positive definite (non-finite calibration inputs?)");
  }
  // Columns of L^-1 by forward substitution (independent: in parallel), written straight into U.
  std::vector<float> u(K * K, 0.0f);
  pool.parallel_for(K, 8, [&](int64_t begin, int64_t end) {
    std::vector<double> col(K);
    for (int64_t j = begin; j < end; ++j) {  // column j of L^-1: entries i >= j
      col[j] = 1.0 / a[j * K + j];
      for (int64_t i = j + 1; i < K; ++i) {
        const double* ri = a.data() + i * K;
        double s = 0;
        for (int64_t k = j; k < i; ++k) s += ri[k] * col[k];
        col[i] = -s / ri[i];
      }
      // U[K-1-i][K-1-j] = Linv[i][j]
      for (int64_t i = j; i < K; ++i) u[(K - 1 - i) * K + (K - 1 - j)] = static_cast<float>(col[i]);
    }
  });

  QuantizedMatrix q = make_quantized_matrix(N, K, info);
  pool.parallel_for(N, 4, [&](int64_t begin, int64_t end) {
    std::vector<float> r(K), natural(K);
    for (int64_t n = begin; n < end; ++n) {
      const float* row = w + n * K;
      if (groups == 1) {  // the range from the original row, before any error moves in
        if (options.clip) {
          quantize_group_clipped(q, n, 0, row, diag);
        } else {
          float lo, hi;
          value_range(row, 0, K, lo, hi);
          quantize_group(q, n, 0, row, lo, hi);
        }
      }
      for (int64_t j = 0; j < K; ++j) r[j] = row[perm[j]];
      for (int64_t j = 0; j < K; ++j) {
        const int64_t k = perm[j];
        if (groups > 1 && k % info.group_size == 0) {  // natural order: r is the row, as it is now
          const int64_t g = k / info.group_size;
          if (options.clip) {
            quantize_group_clipped(q, n, g, r.data(), diag);
          } else {
            float lo, hi;
            value_range(r.data(), k, std::min(K, k + info.group_size), lo, hi);
            quantize_group(q, n, g, r.data(), lo, hi);
          }
        }
        const float deq = quantize_element(q, n, k, r[j]);
        const float* uj = u.data() + j * K;
        const float e = (r[j] - deq) / uj[j];
        for (int64_t i = j + 1; i < K; ++i) r[i] -= e * uj[i];
      }
    }
  });
  return q;
}

}  // namespace kiln
