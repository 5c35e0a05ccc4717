// matmul_quant: y[M, N] = x[M, K] · W[N, K]^T (+ bias) with W in kiln's quantized layout
// (common/quant.h: int8 / int4 codes in 32-element blocks, a scale and an optional min per group).
//
//   y[m, n] = Σ_g ( scale[n, g] · Σ_{k in g} x[m, k] · q[n, k]  +  min[n, g] · Σ_{k in g} x[m, k] )
//
// The group sums of x (Σ x over each group) are computed once per call and shared by all rows, so the
// inner loop is only "widen the codes to f32 and multiply-add": no per-element scale or min.
// Activations stay f32 (W8A8 weights, act_bits = 8, round them to int8: matmul_w8a8 below; so does the
// opt-in integer decode of int4 weights, KILN_CPU_QUANT_ACT=int8).
//
// Decode (M <= kStreamMaxRows): tiles of 2 weight rows (each pair one contiguous run of codes) x all M
//   x rows, a software prefetch 2 KB ahead along the codes (matmul_avx512.cc says why: on this Zen 4
//   core 4 rows in lockstep stream at ~10 GB/s, 1-2 rows with a linear prefetch at 20-27), and
//   per-group accumulators folded into the row's total with the group's scale. The avx512 kernels are
//   in matmul_quant_avx512.cc (int4: a VPERMPS table lookup widens 16 codes with a shift and one
//   permute, no int-to-float conversion); the avx2 ones below (int4: 8 code bytes zero-extended to
//   dwords give 16 codes with an AND and a shift).
//   Measured (2-core AMD EPYC Zen 4 guest, 1 thread unless stated; SmolLM2-135M shapes: 30 x [960x576,
//   576x576, 3072x576, 576x1536] + 49152x576, M = 1; per matrix the best of 15 sweeps over all 121,
//   which do not fit the L3), ms per sweep (GB/s of codes + scales + mins), 4-row tiles before -> now:
//                        avx512                  avx2             2 threads avx512
//     int4 g128 +min     9.2 -> 5.95 (12.1)     9.2 -> 7.3       5.2 -> 3.3 (21.8)
//     int4 g32 +min     12.4 -> 6.4  (13.2)    12.4 -> 8.8       6.8 -> 3.5 (23.9)
//     int8 per channel  13.0 -> 5.9  (22.8)    13.0 -> 6.4       7.2 -> 4.0 (33.6)
//     int8 g32          14.3 -> 7.5  (19.0)    14.3 -> 8.2       7.9 -> 4.7 (30.4)
//   int4 is compute-bound on one core: ~16 cycles per 128 codes and row (three 512-bit ops per 16
//   codes; the bare stream of them runs 12.8), so it reads ~12 GB/s where int8 reads at the core's
//   streaming rate. The opt-in int8-activation kernel (matmul_quant_vnni.cc, KILN_CPU_QUANT_ACT=int8)
//   does int4 g128 in 3.5-3.9 ms (19-21 GB/s) at the price of rounding activations.
// Prefill (M > kStreamMaxRows): compute-bound. Panels of rows are dequantized to f32 once and swept
//   by matmul_f32_panel (AVX-512: matmul_avx512.cc's packed 6x64 kernel, which repacks the panel; its
//   cost is small next to the M FMAs per weight): SmolLM2 int4 / int8 engines prefill 128 tokens at
//   ~250 tok/s on one thread, the f32 rate. In a BF16 engine (bf16_prefill) on a CPU with AVX512_BF16
//   the panels are rounded to BF16 and swept by the VDPBF16PS tiles a BF16 matrix uses: the arithmetic
//   of that engine's unquantized matrices, at ~2.7x the f32 rate (SmolLM2 Q4_0 GGUF 254 -> 724 tok/s on
//   one thread, 442 -> 1175 on two; ppl +0.01%, KL 2.2e-4 against the f32 engine of the same file).
// Rows beyond K (the padding of the last block) multiply activations the kernel zero-fills, so
// padding never contributes. Parallel over N like matmul.
#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstring>
#include <vector>

#include "backend/cpu/isa.h"
#include "backend/cpu/kernels.h"
#include "backend/cpu/matmul_internal.h"
#include "backend/cpu/matmul_quant_internal.h"
#include "backend/cpu/simd.h"

namespace kiln::cpu {
namespace {

constexpr int64_t kPanelBytes = 192 * 1024;
// Decode: software prefetch distance along the codes (matmul_avx512.cc says why linear, ~2 KB).
constexpr int64_t kPrefetchBytes = 2048;

inline float load_meta(const void* base, DType dtype, int64_t index) {
  if (dtype == DType::F32) return static_cast<const float*>(base)[index];
  return f16_to_f32(static_cast<const uint16_t*>(base)[index]);
}

// load_meta with F16C's conversion (dtype.cc's portable f16_to_f32 costs more than a block of codes).
KILN_AVX2 inline float load_meta_f16c(const void* base, DType dtype, int64_t index) {
  if (dtype == DType::F32) return static_cast<const float*>(base)[index];
  return _cvtsh_ss(static_cast<const uint16_t*>(base)[index]);
}

// Row n's scales as f32: the row itself (F32), or converted into buf[0, groups) (F16).
KILN_AVX2 inline const float* scales_f32(const QuantArgs& a, int64_t n, float* buf) {
  if (a.w.info.scale_dtype == DType::F32) return static_cast<const float*>(a.w.scales) + n * a.groups;
  const uint16_t* p = static_cast<const uint16_t*>(a.w.scales) + n * a.groups;
  int64_t g = 0;
  for (; g + 8 <= a.groups; g += 8) _mm256_storeu_ps(buf + g, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + g))));
  for (; g < a.groups; ++g) buf[g] = _cvtsh_ss(p[g]);
  return buf;
}

// The group term Σ_g min[n, g] · xsum[m, g] of row n for x row m (0 without mins).
KILN_AVX2 inline float min_term_f16c(const QuantArgs& a, int64_t n, int64_t m) {
  if (!a.w.mins) return 0.0f;
  const float* xs = a.xsum + m * a.groups;
  const int64_t base = n * a.groups;
  __m256 acc = _mm256_setzero_ps();
  int64_t g = 0;
  if (a.w.info.scale_dtype == DType::F16) {
    const uint16_t* p = static_cast<const uint16_t*>(a.w.mins) + base;
    for (; g + 8 <= a.groups; g += 8)
      acc = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + g))), _mm256_loadu_ps(xs + g), acc);
  } else {
    const float* p = static_cast<const float*>(a.w.mins) + base;
    for (; g + 8 <= a.groups; g += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(p + g), _mm256_loadu_ps(xs + g), acc);
  }
  float s = simd::hsum(acc);
  for (; g < a.groups; ++g) s += load_meta_f16c(a.w.mins, a.w.info.scale_dtype, base + g) * xs[g];
  return s;
}

// One 32-element block of codes, widened to 4 vectors of 8 floats (the integer values). int4: each
// half of the 16 bytes zero-extended to 8 dwords holds elements i (low nibble) and i + 16 (high), so
// an AND and a shift give both without a byte-level split.
template <int Bits>
KILN_AVX2 inline void widen_block(const uint8_t* block, __m256 out[4]) {
  if constexpr (Bits == 8) {
    for (int i = 0; i < 4; ++i) {
      const __m128i c = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(block + 8 * i));
      out[i] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c));
    }
  } else {
    const __m256i mask = _mm256_set1_epi32(0x0f);
    const __m256i b0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(block)));
    const __m256i b1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(block + 8)));
    out[0] = _mm256_cvtepi32_ps(_mm256_and_si256(b0, mask));  // elements 0..7
    out[1] = _mm256_cvtepi32_ps(_mm256_and_si256(b1, mask));  // 8..15
    out[2] = _mm256_cvtepi32_ps(_mm256_srli_epi32(b0, 4));    // 16..23
    out[3] = _mm256_cvtepi32_ps(_mm256_srli_epi32(b1, 4));    // 24..31
  }
}

constexpr int64_t block_bytes(int bits) { return bits == 8 ? 32 : 16; }

// NR weight rows x MR activation rows. acc: the current group's Σ x·q in A chains (vector v of a block
// goes to chain v % A, so one output still has independent FMAs); tot: Σ_g scale_g · acc_g. The
// prefetch runs kPrefetchBytes ahead along the tile's rows (one contiguous run), a line per line read.
template <int Bits, int MR, int NR, int A>
KILN_AVX2 void quant_tile(const QuantArgs& a, int64_t n, int64_t m, float* sbuf) {
  const QuantInfo& q = a.w.info;
  const int64_t blocks = quant_padded_k(a.K) / kQuantBlock;
  const int64_t group_blocks = q.group_size / kQuantBlock;  // whole blocks (int8 groups of 16: quant_tile_g16)
  constexpr int64_t kBlocksPerLine = 64 / block_bytes(Bits);
  const float* scales[NR];
  for (int j = 0; j < NR; ++j) scales[j] = scales_f32(a, n + j, sbuf + j * a.groups);
  __m256 tot[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) tot[i][j] = _mm256_setzero_ps();
  const uint8_t* rows = a.w.codes + n * a.row_bytes;
  const char* pf = reinterpret_cast<const char*>(rows) + kPrefetchBytes;
  int64_t b = 0;
  for (int64_t g = 0; g < a.groups; ++g) {
    const int64_t b1 = g + 1 == a.groups ? blocks : b + group_blocks;  // one group: every block
    __m256 acc[A][MR][NR];
    for (int r = 0; r < A; ++r)
      for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NR; ++j) acc[r][i][j] = _mm256_setzero_ps();
    for (; b < b1; ++b) {
      if (b % kBlocksPerLine == 0) {
        for (int j = 0; j < NR; ++j) _mm_prefetch(pf + 64 * j, _MM_HINT_T0);
        pf += 64 * NR;
      }
      for (int j = 0; j < NR; ++j) {
        __m256 w[4];
        widen_block<Bits>(rows + j * a.row_bytes + b * block_bytes(Bits), w);
        for (int i = 0; i < MR; ++i) {
          const float* xb = a.x + (m + i) * a.ldx + b * kQuantBlock;
          for (int v = 0; v < 4; ++v) acc[v % A][i][j] = _mm256_fmadd_ps(_mm256_loadu_ps(xb + 8 * v), w[v], acc[v % A][i][j]);
        }
      }
    }
    for (int j = 0; j < NR; ++j) {
      const __m256 scale = _mm256_broadcast_ss(scales[j] + g);
      for (int i = 0; i < MR; ++i) {
        __m256 sum = acc[0][i][j];
        for (int r = 1; r < A; ++r) sum = _mm256_add_ps(sum, acc[r][i][j]);
        tot[i][j] = _mm256_fmadd_ps(sum, scale, tot[i][j]);
      }
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

// Decode: rows [n0, n1) in tiles of 2 weight rows (1 for an odd last row) x up to 4 x rows; at one x
// row each output keeps 2 accumulator chains (a row's sum is the same whether it is paired or not).
template <int Bits>
KILN_AVX2 void rows_stream_quant(const QuantArgs& a, int64_t n0, int64_t n1) {
  if (Bits == 8 && a.groups > 1 && a.w.info.group_size % kQuantBlock != 0) {
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t m = 0; m < a.M; ++m) quant_tile_g16(a, n, m);
    return;
  }
  thread_local std::vector<float> sbuf;  // [2, groups] f32 scales of the tile's rows
  if (static_cast<int64_t>(sbuf.size()) < 2 * a.groups) sbuf.resize(2 * a.groups);
  float* sb = sbuf.data();
  for (int64_t n = n0; n < n1; n += 2) {
    const bool two = n + 2 <= n1;
    if (a.M == 1) {
      two ? quant_tile<Bits, 1, 2, 2>(a, n, 0, sb) : quant_tile<Bits, 1, 1, 2>(a, n, 0, sb);
      continue;
    }
    int64_t m = 0;
    for (; m + 4 <= a.M; m += 4) two ? quant_tile<Bits, 4, 2, 1>(a, n, m, sb) : quant_tile<Bits, 4, 1, 1>(a, n, m, sb);
    for (; m + 2 <= a.M; m += 2) two ? quant_tile<Bits, 2, 2, 1>(a, n, m, sb) : quant_tile<Bits, 2, 1, 1>(a, n, m, sb);
    if (m < a.M) two ? quant_tile<Bits, 1, 2, 2>(a, n, m, sb) : quant_tile<Bits, 1, 1, 2>(a, n, m, sb);
  }
}

// xsum[m, g] = Σ x[m, k] over group g (the group term's activation side).
KILN_AVX2 void group_sums_avx2(const float* x, int64_t M, int64_t K, int64_t group_size, int64_t groups, float* xsum) {
  for (int64_t m = 0; m < M; ++m) {
    const float* row = x + m * K;
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t k0 = g * group_size, k1 = std::min(K, k0 + group_size);
      __m256 acc = _mm256_setzero_ps();
      int64_t k = k0;
      for (; k + 8 <= k1; k += 8) acc = _mm256_add_ps(acc, _mm256_loadu_ps(row + k));
      float s = simd::hsum(acc);
      for (; k < k1; ++k) s += row[k];
      xsum[m * groups + g] = s;
    }
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

// Row n dequantized to f32 (AVX2 where groups are whole blocks, all but int8 groups of 16, else scalar).
void dequantize_row_any(const QuantArgs& a, int64_t n, float* row) {
  const bool blockwise = using_avx2() && (a.groups == 1 || a.w.info.group_size % kQuantBlock == 0);
  if (!blockwise) {
    dequantize_row_f32(a.w, a.row_bytes, a.groups, n, row);
  } else if (a.w.info.bits == 8) {
    dequantize_row_avx2<8>(a, n, row);
  } else {
    dequantize_row_avx2<4>(a, n, row);
  }
}

// Prefill of a BF16 engine on an AVX512_BF16 CPU: panels of rows dequantized to f32, rounded to BF16
// (nearest even) and swept by matmul_avx512.cc's VDPBF16PS tiles. Panels of 192 rows (3 of its 64-row
// packs) amortize rounding x to BF16, which each panel call does once.
void rows_panel_quant_bf16(const QuantArgs& a, const float* x_unpadded, int64_t n0, int64_t n1) {
  const int64_t K = a.K;
  constexpr int64_t kRows = 192;
  thread_local std::vector<float> row;
  thread_local std::vector<uint16_t> panel;
  if (static_cast<int64_t>(row.size()) < K) row.resize(K);
  if (static_cast<int64_t>(panel.size()) < kRows * K) panel.resize(kRows * K);
  for (int64_t p0 = n0; p0 < n1; p0 += kRows) {
    const int64_t p1 = std::min(n1, p0 + kRows);
    for (int64_t n = p0; n < p1; ++n) {
      dequantize_row_any(a, n, row.data());
      f32_to_bf16_avx512(row.data(), K, panel.data() + (n - p0) * K);
    }
    matmul_bf16_panel_avx512(x_unpadded, a.M, K, panel.data(), p1 - p0, a.bias ? a.bias + p0 : nullptr, a.y + p0, a.ldy);
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
    for (int64_t n = p0; n < p1; ++n) dequantize_row_any(a, n, panel.data() + (n - p0) * K);
    matmul_f32_panel(x_unpadded, a.M, K, panel.data(), p1 - p0, a.bias ? a.bias + p0 : nullptr, a.y + p0, a.ldy);
  }
}

// ---------------------------------------------------------------------------------------------
// W8A8: activation rows rounded to int8 (quantize_activation_row's semantics), integer dot products
// with the int8 codes, one float scale product per output.

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
  const char* pf = reinterpret_cast<const char*>(w) + kPrefetchBytes;
  for (int64_t k = 0; k < a.Kp; k += 32) {
    if (k % 64 == 0) _mm_prefetch(pf + k, _MM_HINT_T0);
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
                  int64_t ldy, ThreadPool& pool, bool bf16_prefill) {
  const int64_t N = w.rows;
  assert(M >= 0 && K == w.cols && ldy >= N);
  if (M == 0 || N == 0) return;
  if (w.info.act_bits == 8) return matmul_w8a8(x, M, K, w, bias, y, ldy, pool);
  const int64_t groups = quant_groups(w.info, K);
  const int64_t row_bytes = quant_row_bytes(w.info, K);
  if (M > kStreamMaxRows) {
    QuantArgs a{x, K, M, K, nullptr, w, groups, row_bytes, bias, y, ldy};
    if (bf16_prefill && using_avx512() && cpu_features().avx512_bf16) {
      pool.parallel_for(N, 64, [&](int64_t n0, int64_t n1) { rows_panel_quant_bf16(a, x, n0, n1); });
    } else {
      pool.parallel_for(N, 12, [&](int64_t n0, int64_t n1) { rows_panel_quant(a, x, n0, n1); });
    }
    return;
  }
  // Activation side, once per call on the calling thread (the workers only read it).
  thread_local std::vector<float> x_pad, xsum;
  if (w.mins) {
    if (static_cast<int64_t>(xsum.size()) < M * groups) xsum.resize(M * groups);
    if (using_avx2()) {
      group_sums_avx2(x, M, K, w.info.group_size, groups, xsum.data());
    } else {
      for (int64_t m = 0; m < M; ++m) {
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t k0 = g * w.info.group_size, k1 = std::min(K, k0 + w.info.group_size);
          float s = 0.0f;
          for (int64_t k = k0; k < k1; ++k) s += x[m * K + k];
          xsum[m * groups + g] = s;
        }
      }
    }
  }
  // Chunks of whole 4-row tiles, at least ~64 KiB of codes each so small matrices are not split at a loss.
  const int64_t min_rows = std::max<int64_t>(4, (65536 + row_bytes - 1) / std::max<int64_t>(row_bytes, 1));
  const int64_t chunk = (min_rows + 3) / 4 * 4;
  const float* sums = w.mins ? xsum.data() : nullptr;
  if (quant_int8_activations() && quant_dot_supports(w.info, K)) {  // opt-in: int4 x int8 activations
    thread_local QuantDotBuffers buffers;
    QuantDotX d{};
    prepare_quant_dot_x(x, M, K, buffers, d);
    const QuantArgs a{x, K, M, K, sums, w, groups, row_bytes, bias, y, ldy};
    pool.parallel_for(N, chunk, [&](int64_t n0, int64_t n1) { quant_dot_rows(a, d, n0, n1); });
    return;
  }
  const float* xs = x;
  int64_t ldx = K;
  const int64_t Kp = quant_padded_k(K);
  const bool avx512 = using_avx512() && quant_decode_avx512_supports(w.info, K);
  if (avx512) {
    ldx = quant_x_stride_avx512(w.info.bits, K);
    if (static_cast<int64_t>(x_pad.size()) < M * ldx) x_pad.resize(M * ldx);
    prepare_quant_x_avx512(w.info.bits, x, M, K, x_pad.data());
    xs = x_pad.data();
  } else if (Kp != K) {
    if (static_cast<int64_t>(x_pad.size()) < M * Kp) x_pad.resize(M * Kp);
    for (int64_t m = 0; m < M; ++m) {
      if (K > 0) std::memcpy(x_pad.data() + m * Kp, x + m * K, K * sizeof(float));
      std::fill(x_pad.data() + m * Kp + K, x_pad.data() + (m + 1) * Kp, 0.0f);
    }
    xs = x_pad.data();
    ldx = Kp;
  }
  const QuantArgs a{xs, ldx, M, K, sums, w, groups, row_bytes, bias, y, ldy};
  void (*fn)(const QuantArgs&, int64_t, int64_t) = &rows_scalar_quant;
  if (avx512) fn = &quant_rows_avx512;
  else if (using_avx2()) fn = w.info.bits == 8 ? &rows_stream_quant<8> : &rows_stream_quant<4>;
  pool.parallel_for(N, chunk, [&](int64_t n0, int64_t n1) { fn(a, n0, n1); });
}

}  // namespace kiln::cpu
