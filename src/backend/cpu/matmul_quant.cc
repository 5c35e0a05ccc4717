// matmul_quant: y[M, N] = x[M, K] · W[N, K]^T (+ bias) with W in kiln's quantized layout
// (common/quant.h: int8 / int4 codes in 32-element blocks, a scale and an optional min per group).
//
//   y[m, n] = Σ_g ( scale[n, g] · Σ_{k in g} x[m, k] · q[n, k]  +  min[n, g] · Σ_{k in g} x[m, k] )
//
// The group sums of x (Σ x over each group) are computed once per call and shared by all rows, so the
// inner loop is only "widen the codes to f32 and multiply-add": no per-element scale or min.
// Decode (M <= kStreamMaxRows): memory-bound. Each code byte is read from memory once (a weight row
//   of a 4096-wide int4 matrix is 2 KiB and stays in L1 while up to 4 x rows use it); 8 codes are
//   widened in registers (int8: sign-extend; int4: one 16-byte load, mask and shift give 32 codes in
//   order) and multiplied into per-group accumulators that fold into the row's total with the group's
//   scale (one vector FMA per group and x row).
// Prefill (M > kStreamMaxRows): compute-bound. Panels of rows are dequantized to f32 once and swept
//   by the f32 register tiles of matmul.cc (matmul_f32_panel).
// Rows beyond K (the padding of the last block) multiply activations the kernel zero-fills, so
// padding never contributes. Parallel over N like matmul.
#include <algorithm>
#include <cassert>
#include <cstring>
#include <vector>

#include "backend/cpu/kernels.h"
#include "backend/cpu/matmul_internal.h"
#include "backend/cpu/simd.h"
#include <cmath>

namespace kiln::cpu {
namespace {

constexpr int64_t kPanelBytes = 192 * 1024;

// Per-call activation side, shared read-only by the workers: x padded to Kp with zeros (only when K is
// not a multiple of 32; else x itself) and the per-group sums of each row.
struct QuantArgs {
  const float* x;      // [M, ldx]
  int64_t ldx;         // Kp when padded, else K
  int64_t M, K;
  const float* xsum;   // [M, groups]
  QuantMatrixView w;
  int64_t groups;
  int64_t row_bytes;
  const float* bias;
  float* y;
  int64_t ldy;
};

inline float load_meta(const void* base, DType dtype, int64_t index) {
  if (dtype == DType::F32) return static_cast<const float*>(base)[index];
  return f16_to_f32(static_cast<const uint16_t*>(base)[index]);
}

// load_meta with F16C's conversion (dtype.cc's portable f16_to_f32 costs more than a block of codes).
KILN_AVX2 inline float load_meta_f16c(const void* base, DType dtype, int64_t index) {
  if (dtype == DType::F32) return static_cast<const float*>(base)[index];
  return _cvtsh_ss(static_cast<const uint16_t*>(base)[index]);
}

// The group term Σ_g min[n, g] · xsum[m, g] of row n for x row m (0 without mins).
KILN_AVX2 inline float min_term_f16c(const QuantArgs& a, int64_t n, int64_t m) {
  if (!a.w.mins) return 0.0f;
  float s = 0.0f;
  const float* xs = a.xsum + m * a.groups;
  for (int64_t g = 0; g < a.groups; ++g) s += load_meta_f16c(a.w.mins, a.w.info.scale_dtype, n * a.groups + g) * xs[g];
  return s;
}

// One 32-element block of codes, widened to 4 vectors of 8 floats (the integer values).
template <int Bits>
KILN_AVX2 inline void widen_block(const uint8_t* block, __m256 out[4]) {
  if constexpr (Bits == 8) {
    for (int i = 0; i < 4; ++i) {
      const __m128i c = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(block + 8 * i));
      out[i] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c));
    }
  } else {
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(block));
    const __m128i mask = _mm_set1_epi8(0x0f);
    const __m128i lo = _mm_and_si128(bytes, mask);                     // elements 0..15
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);  // elements 16..31
    out[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
    out[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
    out[2] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
    out[3] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
  }
}

constexpr int64_t block_bytes(int bits) { return bits == 8 ? 32 : 16; }

// NR weight rows x MR activation rows. acc: the current group's Σ x·q; tot: Σ_g scale_g · acc_g.
template <int Bits, int MR, int NR>
KILN_AVX2 void quant_tile(const QuantArgs& a, int64_t n, int64_t m) {
  const QuantInfo& q = a.w.info;
  const int64_t blocks = quant_padded_k(a.K) / kQuantBlock;
  const int64_t group_blocks = q.group_size / kQuantBlock;  // whole blocks (int8 groups of 16: quant_tile_g16)
  __m256 tot[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) tot[i][j] = _mm256_setzero_ps();
  const uint8_t* rows[NR];
  for (int j = 0; j < NR; ++j) rows[j] = a.w.codes + (n + j) * a.row_bytes;
  int64_t b = 0;
  for (int64_t g = 0; g < a.groups; ++g) {
    const int64_t b1 = g + 1 == a.groups ? blocks : b + group_blocks;  // one group: every block
    __m256 acc[MR][NR];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_ps();
    for (; b < b1; ++b) {
      for (int j = 0; j < NR; ++j) {
        if ((b & 1) == 0) _mm_prefetch(reinterpret_cast<const char*>(rows[j] + (b + 8) * block_bytes(Bits)), _MM_HINT_T0);
        __m256 w[4];
        widen_block<Bits>(rows[j] + b * block_bytes(Bits), w);
        for (int i = 0; i < MR; ++i) {
          const float* xb = a.x + (m + i) * a.ldx + b * kQuantBlock;
          for (int v = 0; v < 4; ++v) acc[i][j] = _mm256_fmadd_ps(_mm256_loadu_ps(xb + 8 * v), w[v], acc[i][j]);
        }
      }
    }
    for (int j = 0; j < NR; ++j) {
      const __m256 scale = _mm256_set1_ps(load_meta_f16c(a.w.scales, q.scale_dtype, (n + j) * a.groups + g));
      for (int i = 0; i < MR; ++i) tot[i][j] = _mm256_fmadd_ps(acc[i][j], scale, tot[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) {
      float s = simd::hsum(tot[i][j]) + min_term_f16c(a, n + j, m + i);
      if (a.bias) s += a.bias[n + j];
      a.y[(m + i) * a.ldy + n + j] = s;
    }
  }
}

// int8 with groups of 16 (half a block): scales change mid-block, so this tile applies them per
// 16 elements. Correct for any group size; used only where the block-wise tile cannot be.
KILN_AVX2 void quant_tile_g16(const QuantArgs& a, int64_t n, int64_t m) {
  const QuantInfo& q = a.w.info;
  const uint8_t* row = a.w.codes + n * a.row_bytes;
  const float* x = a.x + m * a.ldx;
  __m256 tot = _mm256_setzero_ps();
  for (int64_t g = 0; g < a.groups; ++g) {
    const __m256 scale = _mm256_set1_ps(load_meta_f16c(a.w.scales, q.scale_dtype, n * a.groups + g));
    const int64_t k0 = g * q.group_size, k1 = std::min(quant_padded_k(a.K), k0 + q.group_size);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t k = k0; k < k1; k += 8) {
      const __m128i c = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + k));
      acc = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c)), acc);
    }
    tot = _mm256_fmadd_ps(acc, scale, tot);
  }
  float s = simd::hsum(tot) + min_term_f16c(a, n, m);
  if (a.bias) s += a.bias[n];
  a.y[m * a.ldy + n] = s;
}

template <int Bits, int MR>
KILN_AVX2 void quant_tile_nr(int nr, const QuantArgs& a, int64_t n, int64_t m) {
  switch (nr) {
    case 1: return quant_tile<Bits, MR, 1>(a, n, m);
    case 2: return quant_tile<Bits, MR, 2>(a, n, m);
    case 3: return quant_tile<Bits, MR, 3>(a, n, m);
    default: return quant_tile<Bits, MR, 4>(a, n, m);
  }
}

// Decode: rows [n0, n1), 4 weight rows a tile at one x row, 2 at two, 1 at four (13 of 16 ymm live).
template <int Bits>
KILN_AVX2 void rows_stream_quant(const QuantArgs& a, int64_t n0, int64_t n1) {
  if (Bits == 8 && a.groups > 1 && a.w.info.group_size % kQuantBlock != 0) {
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t m = 0; m < a.M; ++m) quant_tile_g16(a, n, m);
    return;
  }
  if (a.M == 1) {
    int64_t n = n0;
    for (; n + 4 <= n1; n += 4) quant_tile<Bits, 1, 4>(a, n, 0);
    if (n < n1) quant_tile_nr<Bits, 1>(static_cast<int>(n1 - n), a, n, 0);
    return;
  }
  for (int64_t n = n0; n < n1; n += 2) {
    const int nr = static_cast<int>(std::min<int64_t>(2, n1 - n));
    int64_t m = 0;
    for (; m + 4 <= a.M; m += 4) nr == 2 ? quant_tile<Bits, 4, 2>(a, n, m) : quant_tile<Bits, 4, 1>(a, n, m);
    for (; m + 2 <= a.M; m += 2) nr == 2 ? quant_tile<Bits, 2, 2>(a, n, m) : quant_tile<Bits, 2, 1>(a, n, m);
    if (m < a.M) nr == 2 ? quant_tile<Bits, 1, 2>(a, n, m) : quant_tile<Bits, 1, 1>(a, n, m);
  }
}

// Row n dequantized to f32 into out[K] (scalar; also the prefill panel fill on every path).
void dequantize_row_f32(const QuantMatrixView& w, int64_t row_bytes, int64_t groups, int64_t n, float* out) {
  const uint8_t* codes = w.codes + n * row_bytes;
  const QuantInfo& q = w.info;
  for (int64_t g = 0; g < groups; ++g) {
    const float scale = load_meta(w.scales, q.scale_dtype, n * groups + g);
    const float min = w.mins ? load_meta(w.mins, q.scale_dtype, n * groups + g) : 0.0f;
    const int64_t k0 = g * q.group_size, k1 = std::min(w.cols, k0 + q.group_size);
    if (q.bits == 8) {
      for (int64_t k = k0; k < k1; ++k) out[k] = scale * static_cast<float>(static_cast<int8_t>(codes[k])) + min;
    } else {
      for (int64_t k = k0; k < k1; ++k) {
        const uint8_t byte = codes[(k / kQuantBlock) * 16 + (k & 15)];
        const int code = (k & 16) ? (byte >> 4) : (byte & 0x0f);
        out[k] = scale * static_cast<float>(code) + min;
      }
    }
  }
}

// Scalar decode: dequantize each row once, then dot it with every x row.
void rows_scalar_quant(const QuantArgs& a, int64_t n0, int64_t n1) {
  thread_local std::vector<float> row;
  if (static_cast<int64_t>(row.size()) < a.K) row.resize(a.K);
  for (int64_t n = n0; n < n1; ++n) {
    dequantize_row_f32(a.w, a.row_bytes, a.groups, n, row.data());
    for (int64_t m = 0; m < a.M; ++m) {
      const float* xr = a.x + m * a.ldx;
      float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      int64_t k = 0;
      for (; k + 4 <= a.K; k += 4) {
        s0 += xr[k] * row[k];
        s1 += xr[k + 1] * row[k + 1];
        s2 += xr[k + 2] * row[k + 2];
        s3 += xr[k + 3] * row[k + 3];
      }
      for (; k < a.K; ++k) s0 += xr[k] * row[k];
      const float sum = (s0 + s1) + (s2 + s3);
      a.y[m * a.ldy + n] = a.bias ? sum + a.bias[n] : sum;
    }
  }
}

// Row n dequantized to f32 with AVX2, a block at a time: out = q * scale + min (groups of whole blocks;
// the last, partial block goes through a 32-float buffer so nothing is written past K).
template <int Bits>
KILN_AVX2 void dequantize_row_avx2(const QuantArgs& a, int64_t n, float* out) {
  const QuantMatrixView& w = a.w;
  const uint8_t* codes = w.codes + n * a.row_bytes;
  const int64_t blocks = quant_padded_k(a.K) / kQuantBlock, group_blocks = w.info.group_size / kQuantBlock;
  int64_t b = 0;
  for (int64_t g = 0; g < a.groups; ++g) {
    const __m256 scale = _mm256_set1_ps(load_meta_f16c(w.scales, w.info.scale_dtype, n * a.groups + g));
    const __m256 min = _mm256_set1_ps(w.mins ? load_meta_f16c(w.mins, w.info.scale_dtype, n * a.groups + g) : 0.0f);
    const int64_t b1 = g + 1 == a.groups ? blocks : b + group_blocks;
    for (; b < b1; ++b) {
      __m256 q[4];
      widen_block<Bits>(codes + b * block_bytes(Bits), q);
      const bool whole = (b + 1) * kQuantBlock <= a.K;
      alignas(32) float tail[kQuantBlock];
      float* dst = whole ? out + b * kQuantBlock : tail;
      for (int v = 0; v < 4; ++v) _mm256_storeu_ps(dst + 8 * v, _mm256_fmadd_ps(q[v], scale, min));
      if (!whole) std::copy(tail, tail + (a.K - b * kQuantBlock), out + b * kQuantBlock);
    }
  }
}

// Prefill: dequantize a panel of rows to f32 (row stride K), then the f32 tiles of matmul.cc.
void rows_panel_quant(const QuantArgs& a, const float* x_unpadded, int64_t n0, int64_t n1) {
  const int64_t K = a.K;
  const int64_t panel_rows = std::clamp<int64_t>(kPanelBytes / (4 * std::max<int64_t>(K, 1)) / 3 * 3, 3, 96);
  thread_local std::vector<float> panel;
  if (static_cast<int64_t>(panel.size()) < panel_rows * K) panel.resize(panel_rows * K);
  for (int64_t p0 = n0; p0 < n1; p0 += panel_rows) {
    const int64_t p1 = std::min(n1, p0 + panel_rows);
    // AVX2 where groups are whole blocks (all but int8 groups of 16), else the scalar loop.
    const bool blockwise = using_avx2() && (a.groups == 1 || a.w.info.group_size % kQuantBlock == 0);
    for (int64_t n = p0; n < p1; ++n) {
      float* row = panel.data() + (n - p0) * K;
      if (!blockwise) {
        dequantize_row_f32(a.w, a.row_bytes, a.groups, n, row);
      } else if (a.w.info.bits == 8) {
        dequantize_row_avx2<8>(a, n, row);
      } else {
        dequantize_row_avx2<4>(a, n, row);
      }
    }
    matmul_f32_panel(x_unpadded, a.M, K, panel.data(), p1 - p0, a.bias ? a.bias + p0 : nullptr, a.y + p0, a.ldy);
  }
}

// ---------------------------------------------------------------------------------------------
// W8A8: activation rows rounded to int8 (quantize_activation_row's semantics), integer dot products
// with the int8 codes, one float scale product per output.

struct W8A8Args {
  const int8_t* xq;       // [M, Kp], zero padded
  const float* xscale;    // [M]
  int64_t M, Kp;
  QuantMatrixView w;
  int64_t row_bytes;
  const float* bias;
  float* y;
  int64_t ldy;
};

// Rounds 8 floats to int32 codes as quantize_activation_row does (x * inv, half to even, clamp).
KILN_AVX2 inline __m256i round_codes8(const float* x, __m256 inv) {
  __m256 v = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x), inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  v = _mm256_max_ps(_mm256_min_ps(v, _mm256_set1_ps(127.0f)), _mm256_set1_ps(-127.0f));
  return _mm256_cvtps_epi32(v);
}

KILN_AVX2 void quantize_rows_avx2(const float* x, int64_t M, int64_t K, int64_t Kp, float act_scale, int8_t* q,
                                  float* scales) {
  for (int64_t m = 0; m < M; ++m) {
    const float* row = x + m * K;
    int8_t* out = q + m * Kp;
    float scale = act_scale;
    if (scale <= 0.0f) {
      __m256 amax = _mm256_setzero_ps();
      const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
      int64_t k = 0;
      for (; k + 8 <= K; k += 8) amax = _mm256_max_ps(amax, _mm256_and_ps(_mm256_loadu_ps(row + k), abs_mask));
      float a = simd::hmax(amax);
      for (; k < K; ++k) a = std::max(a, std::fabs(row[k]));
      scale = a / 127.0f;
    }
    scales[m] = scale;
    const float inv_s = scale > 0.0f ? 1.0f / scale : 0.0f;
    const __m256 inv = _mm256_set1_ps(inv_s);
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
      const __m256i a = round_codes8(row + k, inv), b = round_codes8(row + k + 8, inv);
      const __m256i c = round_codes8(row + k + 16, inv), d = round_codes8(row + k + 24, inv);
      // packs work within 128-bit lanes: the permute restores element order.
      const __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + k),
                          _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    }
    for (; k < K; ++k) out[k] = static_cast<int8_t>(std::clamp(std::nearbyint(row[k] * inv_s), -127.0f, 127.0f));
    std::fill(out + K, out + Kp, int8_t{0});
  }
}

// 32 int8 products summed into 8 int32 lanes. maddubs multiplies unsigned by signed bytes: |x| and
// sign(x) * w give the same products (llama.cpp's trick); pairs fit int16 (2 * 127 * 127 < 2^15).
KILN_AVX2 inline __m256i dot32_i8(__m256i x, __m256i w, __m256i acc) {
  const __m256i products = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(w, x));
  return _mm256_add_epi32(acc, _mm256_madd_epi16(products, _mm256_set1_epi16(1)));
}

KILN_AVX2 inline int32_t hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

template <int MR>
KILN_AVX2 void w8a8_tile(const W8A8Args& a, int64_t n, int64_t m) {
  const uint8_t* w = a.w.codes + n * a.row_bytes;
  __m256i acc[MR];
  for (int i = 0; i < MR; ++i) acc[i] = _mm256_setzero_si256();
  for (int64_t k = 0; k < a.Kp; k += 32) {
    const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k));
    for (int i = 0; i < MR; ++i) {
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.xq + (m + i) * a.Kp + k));
      acc[i] = dot32_i8(xv, wv, acc[i]);
    }
  }
  const float wscale = load_meta_f16c(a.w.scales, a.w.info.scale_dtype, n);
  for (int i = 0; i < MR; ++i) {
    float v = static_cast<float>(hsum_i32(acc[i])) * (a.xscale[m + i] * wscale);
    if (a.bias) v += a.bias[n];
    a.y[(m + i) * a.ldy + n] = v;
  }
}

KILN_AVX2 void rows_w8a8_avx2(const W8A8Args& a, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    int64_t m = 0;
    for (; m + 4 <= a.M; m += 4) w8a8_tile<4>(a, n, m);
    for (; m < a.M; ++m) w8a8_tile<1>(a, n, m);
  }
}

void rows_w8a8_scalar(const W8A8Args& a, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* w = reinterpret_cast<const int8_t*>(a.w.codes + n * a.row_bytes);
    const float wscale = load_meta(a.w.scales, a.w.info.scale_dtype, n);
    for (int64_t m = 0; m < a.M; ++m) {
      const int8_t* x = a.xq + m * a.Kp;
      int32_t sum = 0;
      for (int64_t k = 0; k < a.Kp; ++k) sum += static_cast<int32_t>(x[k]) * w[k];
      float v = static_cast<float>(sum) * (a.xscale[m] * wscale);
      if (a.bias) v += a.bias[n];
      a.y[m * a.ldy + n] = v;
    }
  }
}

void matmul_w8a8(const float* x, int64_t M, int64_t K, const QuantMatrixView& w, const float* bias, float* y,
                 int64_t ldy, ThreadPool& pool) {
  const int64_t Kp = quant_padded_k(K);
  thread_local std::vector<int8_t> xq;
  thread_local std::vector<float> xscale;
  if (static_cast<int64_t>(xq.size()) < M * Kp) xq.resize(M * Kp);
  if (static_cast<int64_t>(xscale.size()) < M) xscale.resize(M);
  const bool avx2 = using_avx2();
  if (avx2) {
    quantize_rows_avx2(x, M, K, Kp, w.info.act_scale, xq.data(), xscale.data());
  } else {
    for (int64_t m = 0; m < M; ++m) {
      xscale[m] = quantize_activation_row(x + m * K, K, w.info.act_scale, xq.data() + m * Kp);
      std::fill(xq.data() + m * Kp + K, xq.data() + (m + 1) * Kp, int8_t{0});
    }
  }
  const W8A8Args a{xq.data(), xscale.data(), M, Kp, w, quant_row_bytes(w.info, K), bias, y, ldy};
  void (*fn)(const W8A8Args&, int64_t, int64_t) = avx2 ? &rows_w8a8_avx2 : &rows_w8a8_scalar;
  const int64_t min_rows = std::max<int64_t>(4, 65536 / std::max<int64_t>(Kp * std::max<int64_t>(M, 1) / 4, 1));
  pool.parallel_for(w.rows, min_rows, [&](int64_t n0, int64_t n1) { fn(a, n0, n1); });
}

}  // namespace

void matmul_quant(const float* x, int64_t M, int64_t K, const QuantMatrixView& w, const float* bias, float* y,
                  int64_t ldy, ThreadPool& pool) {
  const int64_t N = w.rows;
  assert(M >= 0 && K == w.cols && ldy >= N);
  if (M == 0 || N == 0) return;
  if (w.info.act_bits == 8) return matmul_w8a8(x, M, K, w, bias, y, ldy, pool);
  const int64_t groups = quant_groups(w.info, K);
  const int64_t row_bytes = quant_row_bytes(w.info, K);
  if (M > kStreamMaxRows) {
    QuantArgs a{x, K, M, K, nullptr, w, groups, row_bytes, bias, y, ldy};
    pool.parallel_for(N, 12, [&](int64_t n0, int64_t n1) { rows_panel_quant(a, x, n0, n1); });
    return;
  }
  // Activation side, once per call on the calling thread (the workers only read it).
  const int64_t Kp = quant_padded_k(K);
  thread_local std::vector<float> x_pad, xsum;
  const float* xs = x;
  int64_t ldx = K;
  if (Kp != K) {
    if (static_cast<int64_t>(x_pad.size()) < M * Kp) x_pad.resize(M * Kp);
    for (int64_t m = 0; m < M; ++m) {
      std::memcpy(x_pad.data() + m * Kp, x + m * K, K * sizeof(float));
      std::fill(x_pad.data() + m * Kp + K, x_pad.data() + (m + 1) * Kp, 0.0f);
    }
    xs = x_pad.data();
    ldx = Kp;
  }
  if (w.mins) {
    if (static_cast<int64_t>(xsum.size()) < M * groups) xsum.resize(M * groups);
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t k0 = g * w.info.group_size, k1 = std::min(K, k0 + w.info.group_size);
        float s = 0.0f;
        for (int64_t k = k0; k < k1; ++k) s += x[m * K + k];
        xsum[m * groups + g] = s;
      }
    }
  }
  const QuantArgs a{xs, ldx, M, K, w.mins ? xsum.data() : nullptr, w, groups, row_bytes, bias, y, ldy};
  void (*fn)(const QuantArgs&, int64_t, int64_t) = &rows_scalar_quant;
  if (using_avx2()) fn = w.info.bits == 8 ? &rows_stream_quant<8> : &rows_stream_quant<4>;
  // Chunks of whole 4-row tiles, at least ~64 KiB of codes each so small matrices are not split at a loss.
  const int64_t min_rows = std::max<int64_t>(4, (65536 + row_bytes - 1) / std::max<int64_t>(row_bytes, 1));
  pool.parallel_for(N, (min_rows + 3) / 4 * 4, [&](int64_t n0, int64_t n1) { fn(a, n0, n1); });
}

}  // namespace kiln::cpu
