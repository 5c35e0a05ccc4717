// Internal to backend/cpu: AVX2/FMA/F16C helpers shared by the kernel files.
//
// The library is compiled for baseline x86-64; only functions marked KILN_AVX2 are compiled for
// AVX2+FMA+F16C, and they are only called after cpu_has_avx2_fma() said yes (see using_avx2()).
// Lambdas do not inherit a target attribute, so parallel_for bodies call a KILN_AVX2 function
// rather than using intrinsics directly.
#pragma once

#include <immintrin.h>

#include <cstdint>

#define KILN_AVX2 __attribute__((target("avx2,fma,f16c")))
// AVX-512 F/BW/VL/DQ on top of AVX2 (isa.h's avx512 level); only called when using_avx512().
#define KILN_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
// The avx512 level plus VDPBF16PS; only called when cpu_features().avx512_bf16.
#define KILN_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")))

namespace kiln::cpu::simd {

// Sum of the 8 lanes.
KILN_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

KILN_AVX2 inline float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// 8 consecutive weights as f32.
KILN_AVX2 inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
KILN_AVX2 inline __m256 load8_f16(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
// bf16 is the top half of an f32: widen to 32 bits and shift left by 16.
KILN_AVX2 inline __m256 load8_bf16(const uint16_t* p) {
  const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

// Mask of the first `count` lanes (0 <= count <= 8), for loads/stores of row tails.
KILN_AVX2 inline __m256i tail_mask(int64_t count) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)), lane);
}

// exp(x) for 8 lanes: Cephes expf (range reduction x = n ln2 + r, degree-5 polynomial for e^r),
// the same scheme as avx_mathfun and ggml. Max relative error ~2 ulp over the clamped range;
// inputs below -87.3 give 0 (close enough to the true ~1e-38 for softmax and silu).
KILN_AVX2 inline __m256 exp8(__m256 x) {
  const __m256 hi = _mm256_set1_ps(88.3762626647949f);
  const __m256 lo = _mm256_set1_ps(-87.3365447504f);
  const __m256 underflow = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_max_ps(_mm256_min_ps(x, hi), lo);
  // n = round(x / ln2); r = x - n * ln2 with ln2 split in two for precision.
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 r2 = _mm256_mul_ps(r, r);
  p = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  // Scale by 2^n; n in [-126, 127] after the clamp, so the exponent field stays valid.
  const __m256i scale =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const __m256 result = _mm256_mul_ps(p, _mm256_castsi256_ps(scale));
  return _mm256_andnot_ps(underflow, result);
}

}  // namespace kiln::cpu::simd
