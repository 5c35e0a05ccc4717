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

namespace kiln::cpu {
namespace {

constexpr int64_t kStreamMaxRows = 8;
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

// The group term Σ_g min[n, g] · xsum[m, g] of row n for x row m (0 without mins).
inline float min_term(const QuantArgs& a, int64_t n, int64_t m) {
  if (!a.w.mins) return 0.0f;
  float s = 0.0f;
  const float* xs = a.xsum + m * a.groups;
  for (int64_t g = 0; g < a.groups; ++g) s += load_meta(a.w.mins, a.w.info.scale_dtype, n * a.groups + g) * xs[g];
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
      const __m256 scale = _mm256_set1_ps(load_meta(a.w.scales, q.scale_dtype, (n + j) * a.groups + g));
      for (int i = 0; i < MR; ++i) tot[i][j] = _mm256_fmadd_ps(acc[i][j], scale, tot[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) {
      float s = simd::hsum(tot[i][j]) + min_term(a, n + j, m + i);
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
    const __m256 scale = _mm256_set1_ps(load_meta(a.w.scales, q.scale_dtype, n * a.groups + g));
    const int64_t k0 = g * q.group_size, k1 = std::min(quant_padded_k(a.K), k0 + q.group_size);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t k = k0; k < k1; k += 8) {
      const __m128i c = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + k));
      acc = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c)), acc);
    }
    tot = _mm256_fmadd_ps(acc, scale, tot);
  }
  float s = simd::hsum(tot) + min_term(a, n, m);
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

// Prefill: dequantize a panel of rows to f32 (row stride K), then the f32 tiles of matmul.cc.
void rows_panel_quant(const QuantArgs& a, const float* x_unpadded, int64_t n0, int64_t n1) {
  const int64_t K = a.K;
  const int64_t panel_rows = std::clamp<int64_t>(kPanelBytes / (4 * std::max<int64_t>(K, 1)) / 3 * 3, 3, 96);
  thread_local std::vector<float> panel;
  if (static_cast<int64_t>(panel.size()) < panel_rows * K) panel.resize(panel_rows * K);
  for (int64_t p0 = n0; p0 < n1; p0 += panel_rows) {
    const int64_t p1 = std::min(n1, p0 + panel_rows);
    for (int64_t n = p0; n < p1; ++n) dequantize_row_f32(a.w, a.row_bytes, a.groups, n, panel.data() + (n - p0) * K);
    matmul_f32_panel(x_unpadded, a.M, K, panel.data(), p1 - p0, a.bias ? a.bias + p0 : nullptr, a.y + p0, a.ldy);
  }
}

}  // namespace

void matmul_quant(const float* x, int64_t M, int64_t K, const QuantMatrixView& w, const float* bias, float* y,
                  int64_t ldy, ThreadPool& pool) {
  const int64_t N = w.rows;
  assert(M >= 0 && K == w.cols && ldy >= N);
  if (M == 0 || N == 0) return;
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
