// rms_norm: y = x / sqrt(mean(x^2) + eps) * weight, per row.
// Source: HF transformers LlamaRMSNorm.forward: variance = x.pow(2).mean(-1); x * rsqrt(variance + eps),
// then weight * x. Computed in f32 like HF for fp32 models; the sum of squares uses several partial
// sums (8 lanes x 4 accumulators on AVX2), which is if anything closer to the exact value than
// a single running sum.
#include <cassert>
#include <cmath>

#include "backend/cpu/kernels.h"
#include "backend/cpu/simd.h"

namespace kiln::cpu {
namespace {

KILN_AVX2 void rms_norm_row_avx2(const float* x, const float* weight, int64_t D, float eps, float* y) {
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  int64_t d = 0;
  for (; d + 32 <= D; d += 32) {
    for (int u = 0; u < 4; ++u) {
      const __m256 v = _mm256_loadu_ps(x + d + 8 * u);
      acc[u] = _mm256_fmadd_ps(v, v, acc[u]);
    }
  }
  for (; d + 8 <= D; d += 8) {
    const __m256 v = _mm256_loadu_ps(x + d);
    acc[0] = _mm256_fmadd_ps(v, v, acc[0]);
  }
  float sum = simd::hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
  for (; d < D; ++d) sum += x[d] * x[d];
  const float inv = 1.0f / std::sqrt(sum / static_cast<float>(D) + eps);
  const __m256 inv8 = _mm256_set1_ps(inv);
  d = 0;
  for (; d + 8 <= D; d += 8) {
    const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + d), inv8);
    _mm256_storeu_ps(y + d, _mm256_mul_ps(_mm256_loadu_ps(weight + d), v));
  }
  for (; d < D; ++d) y[d] = weight[d] * (x[d] * inv);
}

void rms_norm_row_scalar(const float* x, const float* weight, int64_t D, float eps, float* y) {
  float s[4] = {0, 0, 0, 0};
  int64_t d = 0;
  for (; d + 4 <= D; d += 4)
    for (int u = 0; u < 4; ++u) s[u] += x[d + u] * x[d + u];
  for (; d < D; ++d) s[0] += x[d] * x[d];
  const float sum = (s[0] + s[1]) + (s[2] + s[3]);
  const float inv = 1.0f / std::sqrt(sum / static_cast<float>(D) + eps);
  for (d = 0; d < D; ++d) y[d] = weight[d] * (x[d] * inv);
}

}  // namespace

void rms_norm(const float* x, const float* weight, int64_t M, int64_t D, float eps, float* y) {
  assert(M >= 0 && D > 0);
  const bool avx2 = using_avx2();
  for (int64_t m = 0; m < M; ++m) {
    if (avx2) {
      rms_norm_row_avx2(x + m * D, weight, D, eps, y + m * D);
    } else {
      rms_norm_row_scalar(x + m * D, weight, D, eps, y + m * D);
    }
  }
}

}  // namespace kiln::cpu
