// Internal to backend/cpu: AVX-512 helpers shared by the quantized decode kernels
// (matmul_quant_avx512.cc and matmul_quant_vnni.cc). Include only from translation units whose
// callers carry at least KILN_AVX512's target (the helpers are always inlined into them).
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "backend/cpu/matmul_quant_internal.h"
#include "backend/cpu/simd.h"

#define KILN_INLINE inline __attribute__((always_inline))

namespace kiln::cpu::quant_simd {

// The first min(n, 16) lanes.
KILN_AVX512 KILN_INLINE __mmask16 mask16(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << n) - 1);
}

// Scales or mins of row n, groups g0 .. g0 + 15, as f32 (0 past the row's groups).
KILN_AVX512 KILN_INLINE __m512 meta16(const QuantArgs& a, const void* base, int64_t n, int64_t g0) {
  const __mmask16 m = mask16(a.groups - g0);
  const int64_t index = n * a.groups + g0;
  if (a.w.info.scale_dtype == DType::F32) return _mm512_maskz_loadu_ps(m, static_cast<const float*>(base) + index);
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(base) + index));
}

// Lane g % 16 of v in every lane (v holds groups g & ~15 ..).
KILN_AVX512 KILN_INLINE __m512 lane(__m512 v, int64_t g) {
  return _mm512_permutexvar_ps(_mm512_set1_epi32(static_cast<int>(g & 15)), v);
}

}  // namespace kiln::cpu::quant_simd
