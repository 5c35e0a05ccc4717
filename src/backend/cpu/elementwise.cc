// Element-wise kernels: add (residual), swiglu (gated MLP activation), embedding (row gather).
// All are memory-bound single passes; they run on the calling thread (at decode sizes a pool
// dispatch would cost more than the work).
#include <cassert>
#include <cmath>
#include <cstring>

#include "backend/cpu/kernels.h"
#include "backend/cpu/simd.h"

namespace kiln::cpu {
namespace {

KILN_AVX2 void add_avx2(float* x, const float* r, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(x + i, _mm256_add_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(r + i)));
  for (; i < n; ++i) x[i] += r[i];
}

// silu(g) = g * sigmoid(g) = g / (1 + exp(-g))   (HF ACT2FN["silu"], LlamaMLP: down(silu(gate) * up)).
KILN_AVX2 void swiglu_row_avx2(const float* gate, const float* up, int64_t F, float* out) {
  const __m256 one = _mm256_set1_ps(1.0f);
  int64_t f = 0;
  for (; f + 8 <= F; f += 8) {
    const __m256 g = _mm256_loadu_ps(gate + f);
    const __m256 e = simd::exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
    const __m256 silu = _mm256_div_ps(g, _mm256_add_ps(one, e));
    _mm256_storeu_ps(out + f, _mm256_mul_ps(silu, _mm256_loadu_ps(up + f)));
  }
  for (; f < F; ++f) out[f] = gate[f] / (1.0f + std::exp(-gate[f])) * up[f];
}

void swiglu_row_scalar(const float* gate, const float* up, int64_t F, float* out) {
  for (int64_t f = 0; f < F; ++f) out[f] = gate[f] / (1.0f + std::exp(-gate[f])) * up[f];
}

KILN_AVX2 void widen_f16_avx2(const uint16_t* src, int64_t n, float* dst) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, simd::load8_f16(src + i));
  for (; i < n; ++i) dst[i] = f16_to_f32(src[i]);
}

KILN_AVX2 void widen_bf16_avx2(const uint16_t* src, int64_t n, float* dst) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, simd::load8_bf16(src + i));
  for (; i < n; ++i) dst[i] = bf16_to_f32(src[i]);
}

}  // namespace

void add(float* x, const float* r, int64_t M, int64_t D) {
  assert(M >= 0 && D >= 0);
  const int64_t n = M * D;
  if (using_avx2()) {
    add_avx2(x, r, n);
  } else {
    for (int64_t i = 0; i < n; ++i) x[i] += r[i];
  }
}

void swiglu(const float* gate_up, int64_t M, int64_t F, float* out) {
  assert(M >= 0 && F >= 0);
  const bool avx2 = using_avx2();
  for (int64_t m = 0; m < M; ++m) {
    const float* gate = gate_up + m * 2 * F;
    if (avx2) {
      swiglu_row_avx2(gate, gate + F, F, out + m * F);
    } else {
      swiglu_row_scalar(gate, gate + F, F, out + m * F);
    }
  }
}

void embedding(const int32_t* ids, int64_t M, const void* table, DType dtype, int64_t D, float* out) {
  assert(M >= 0 && D >= 0);
  const bool avx2 = using_avx2();
  for (int64_t m = 0; m < M; ++m) {
    assert(ids[m] >= 0);
    const int64_t row = ids[m];
    float* dst = out + m * D;
    switch (dtype) {
      case DType::F32:
        std::memcpy(dst, static_cast<const float*>(table) + row * D, D * sizeof(float));
        break;
      case DType::F16: {
        const uint16_t* src = static_cast<const uint16_t*>(table) + row * D;
        if (avx2) {
          widen_f16_avx2(src, D, dst);
        } else {
          for (int64_t d = 0; d < D; ++d) dst[d] = f16_to_f32(src[d]);
        }
        break;
      }
      case DType::BF16: {
        const uint16_t* src = static_cast<const uint16_t*>(table) + row * D;
        if (avx2) {
          widen_bf16_avx2(src, D, dst);
        } else {
          for (int64_t d = 0; d < D; ++d) dst[d] = bf16_to_f32(src[d]);
        }
        break;
      }
      default: assert(false && "embedding: table dtype must be F32, F16 or BF16");
    }
  }
}

}  // namespace kiln::cpu
