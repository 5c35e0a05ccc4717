// Rotary position embedding (Su et al. 2021, "RoFormer"), in place on the heads of each row.
// For frequency i of a head and position p, the pair (a, b) is rotated by angle p·theta_i:
//   a' = a·cos - b·sin,   b' = b·cos + a·sin
// Which elements form a pair depends on the checkpoint's layout:
//   interleaved = false: (j, j + head_dim/2)  HF apply_rotary_pos_emb / rotate_half (Llama, Qwen2)
//   interleaved = true:  (2j, 2j + 1)         llama2.c run.c, Meta's original complex-number form
#include <cassert>

#include "backend/cpu/kernels.h"
#include "backend/cpu/simd.h"

namespace kiln::cpu {
namespace {

// Rotates frequencies [begin, half) of one head.
void rope_pairs_scalar(float* h, int64_t half, int64_t begin, const float* c, const float* s,
                       bool interleaved) {
  for (int64_t i = begin; i < half; ++i) {
    float* a = interleaved ? h + 2 * i : h + i;
    float* b = interleaved ? h + 2 * i + 1 : h + i + half;
    const float x0 = *a, x1 = *b;
    *a = x0 * c[i] - x1 * s[i];
    *b = x1 * c[i] + x0 * s[i];
  }
}

KILN_AVX2 void rope_head_avx2(float* h, int64_t half, const float* c, const float* s, bool interleaved) {
  int64_t i = 0;
  if (!interleaved) {
    for (; i + 8 <= half; i += 8) {
      const __m256 x0 = _mm256_loadu_ps(h + i), x1 = _mm256_loadu_ps(h + half + i);
      const __m256 cv = _mm256_loadu_ps(c + i), sv = _mm256_loadu_ps(s + i);
      _mm256_storeu_ps(h + i, _mm256_fmsub_ps(x0, cv, _mm256_mul_ps(x1, sv)));
      _mm256_storeu_ps(h + half + i, _mm256_fmadd_ps(x1, cv, _mm256_mul_ps(x0, sv)));
    }
  } else {
    // 4 pairs per vector: duplicate each cos/sin into both lanes of its pair; fmaddsub subtracts
    // in even lanes (a' = a·c - b·s) and adds in odd lanes (b' = b·c + a·s).
    for (; i + 4 <= half; i += 4) {
      const __m128 c4 = _mm_loadu_ps(c + i), s4 = _mm_loadu_ps(s + i);
      const __m256 cv = _mm256_set_m128(_mm_unpackhi_ps(c4, c4), _mm_unpacklo_ps(c4, c4));
      const __m256 sv = _mm256_set_m128(_mm_unpackhi_ps(s4, s4), _mm_unpacklo_ps(s4, s4));
      const __m256 x = _mm256_loadu_ps(h + 2 * i);
      const __m256 swapped = _mm256_permute_ps(x, 0xB1);  // (b, a) in each pair
      _mm256_storeu_ps(h + 2 * i, _mm256_fmaddsub_ps(x, cv, _mm256_mul_ps(swapped, sv)));
    }
  }
  rope_pairs_scalar(h, half, i, c, s, interleaved);  // the last < 8 (< 4) frequencies
}

}  // namespace

void rope(float* x, int64_t M, int64_t row_stride, int64_t col_offset, int64_t num_heads,
          int64_t head_dim, const int32_t* positions, const float* cos, const float* sin,
          bool interleaved) {
  assert(head_dim % 2 == 0 && col_offset + num_heads * head_dim <= row_stride);
  const int64_t half = head_dim / 2;
  const bool avx2 = using_avx2();
  for (int64_t m = 0; m < M; ++m) {
    assert(positions[m] >= 0);
    const float* c = cos + positions[m] * half;
    const float* s = sin + positions[m] * half;
    float* row = x + m * row_stride + col_offset;
    for (int64_t h = 0; h < num_heads; ++h) {
      if (avx2) {
        rope_head_avx2(row + h * head_dim, half, c, s, interleaved);
      } else {
        rope_pairs_scalar(row + h * head_dim, half, 0, c, s, interleaved);
      }
    }
  }
}

}  // namespace kiln::cpu
