// matmul on AVX-512 (isa.h's avx512 level): y[M, N] = x[M, K] · w[N, K]^T (+ bias), weights
// F32 / F16 / BF16, rows [n0, n1) of N per call (matmul.cc splits N over the threads).
//
// Decode (M <= 8): memory-bound, so the kernel is shaped by how this core's memory system streams,
// not by arithmetic. Measured on a 2-core AMD EPYC (Zen 4) guest, one thread reading a 256 MiB BF16
// matrix with K = 576 (docs/PERFORMANCE.md): 4 weight rows walked in lockstep with a prefetch of the
// next rows (the AVX2 kernel's pattern) 11.8 GB/s; 8 rows 10-13 GB/s; 1 or 2 rows with a software
// prefetch running ~2 KB ahead along the matrix 22-27 GB/s. Each row pair is one contiguous run of
// memory, so the hardware sees at most two streams and the prefetch covers the line after the pair.
// So: tiles of 2 weight rows x all M activation rows, one 64-byte line per row per step, prefetch
// ahead linearly. The arithmetic per line is small enough to hide under the memory time:
//   F32  16 weights: one FMA per x row.
//   F16  32 weights: two VCVTPH2PS, two FMAs.
//   BF16 32 weights: a BF16 pair (w0, w1) is one 32-bit word; w1 as f32 is the word with its low
//        half cleared (AND) and w0 is the word shifted left by 16 (SLL). Two integer ops give the
//        even and the odd elements as f32, multiplied by x's even and odd elements, which are
//        gathered once per call into a reordered copy of x (per 32: 16 even, then 16 odd).
// Tails (K not a multiple of the line) use masked loads; x is copied into a zero-padded buffer.
//
// Prefill (M > 8): compute-bound. 64 weight rows at a time are converted to f32 and transposed into
// a packed panel [k][64] (16x16 register transposes), then 6-row x blocks sweep it with a 6x64
// outer-product micro-kernel: per k, 4 panel vectors and 6 broadcasts of x feed 24 FMAs into 24
// accumulators, with no horizontal sums. K is blocked by kKc so the panel stays in L2. BF16 weights
// on a CPU with AVX512_BF16 use VDPBF16PS on BF16 pairs instead (see packed_rows_bf16_dot).
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "backend/cpu/isa.h"
#include "backend/cpu/matmul_internal.h"
#include "backend/cpu/simd.h"
#include "common/dtype.h"

namespace kiln::cpu {
namespace {

// Software prefetch distance of the decode stream, in bytes ahead of the current row pair's line.
constexpr int64_t kPrefetchBytes = 2048;
// Rows up to this many bytes are prefetched linearly along the matrix, longer ones row by row.
constexpr int64_t kLinearPrefetchRowBytes = 4096;
// Prefill: rows per packed panel (the micro-kernel's width), x rows per micro-kernel, K block.
constexpr int64_t kNc = 64;
constexpr int kMr = 6;
constexpr int64_t kKc = 1024;
// Packing reads 16 rows at once; each row's loads are prefetched this far ahead.
constexpr int64_t kPackPrefetchBytes = 512;

KILN_AVX512 inline __mmask16 mask16(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << n) - 1);
}
KILN_AVX512 inline __mmask32 mask32(int64_t n) {
  return n >= 32 ? static_cast<__mmask32>(0xffffffffu) : static_cast<__mmask32>((1u << n) - 1);
}

// One 64-byte line of a weight row as f32 vectors (kVecs of 16), and the matching x operands.
template <DType D>
struct Line;
template <>
struct Line<DType::F32> {
  using T = float;
  static constexpr int64_t kElems = 16;
  static constexpr int kVecs = 1;
  KILN_AVX512 static void load(const T* p, __m512* v) { v[0] = _mm512_loadu_ps(p); }
  KILN_AVX512 static void load_tail(const T* p, int64_t n, __m512* v) { v[0] = _mm512_maskz_loadu_ps(mask16(n), p); }
};
template <>
struct Line<DType::F16> {
  using T = uint16_t;
  static constexpr int64_t kElems = 32;
  static constexpr int kVecs = 2;
  KILN_AVX512 static void load(const T* p, __m512* v) {
    const __m512i raw = _mm512_loadu_si512(p);
    v[0] = _mm512_cvtph_ps(_mm512_castsi512_si256(raw));
    v[1] = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(raw, 1));
  }
  KILN_AVX512 static void load_tail(const T* p, int64_t n, __m512* v) {
    const __m512i raw = _mm512_maskz_loadu_epi16(mask32(n), p);
    v[0] = _mm512_cvtph_ps(_mm512_castsi512_si256(raw));
    v[1] = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(raw, 1));
  }
};
template <>
struct Line<DType::BF16> {
  using T = uint16_t;
  static constexpr int64_t kElems = 32;
  static constexpr int kVecs = 2;
  KILN_AVX512 static void split(__m512i raw, __m512* v) {
    v[0] = _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16));                                   // even
    v[1] = _mm512_castsi512_ps(_mm512_and_si512(raw, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));  // odd
  }
  KILN_AVX512 static void load(const T* p, __m512* v) { split(_mm512_loadu_si512(p), v); }
  KILN_AVX512 static void load_tail(const T* p, int64_t n, __m512* v) { split(_mm512_maskz_loadu_epi16(mask32(n), p), v); }
};

// x rows copied into [M, Kp] (Kp = K rounded up to the line), zero-padded; for BF16 each 32 elements
// are stored as their 16 even then their 16 odd elements (the order Line<BF16> produces weights in).
template <DType D>
void prepare_x(const float* x, int64_t M, int64_t K, int64_t Kp, float* xp) {
  for (int64_t m = 0; m < M; ++m) {
    const float* src = x + m * K;
    float* dst = xp + m * Kp;
    if constexpr (D == DType::BF16) {
      for (int64_t k0 = 0; k0 < Kp; k0 += 32) {
        for (int64_t i = 0; i < 16; ++i) {
          const int64_t e = k0 + 2 * i, o = e + 1;
          dst[k0 + i] = e < K ? src[e] : 0.0f;
          dst[k0 + 16 + i] = o < K ? src[o] : 0.0f;
        }
      }
    } else {
      if (K > 0) std::memcpy(dst, src, K * sizeof(float));
      std::fill(dst + K, dst + Kp, 0.0f);
    }
  }
}

// acc[i][j] += Σ_v wv[j][v] * x[i * Kp + 16 v ..]
template <int MR, int NR, int V>
KILN_AVX512 inline void line_fma(__m512 (&acc)[MR][NR], const __m512 (&wv)[NR][V], const float* x, int64_t Kp) {
  for (int i = 0; i < MR; ++i) {
    for (int v = 0; v < V; ++v) {
      const __m512 xv = _mm512_loadu_ps(x + i * Kp + 16 * v);
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_fmadd_ps(wv[j][v], xv, acc[i][j]);
    }
  }
}

// y[i, j] = xp[i, :] · w[j, :] (+ bias[j]) for i < MR, j < NR: NR weight rows of stride K, read
// once, a line per row per step.
template <DType D, int MR, int NR>
KILN_AVX512 void stream_tile(const float* xp, int64_t Kp, const typename Line<D>::T* w, int64_t K, const float* bias,
                             float* y, int64_t ldy) {
  using L = Line<D>;
  __m512 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  // Short rows (a tile of at most kLinearPrefetchRowBytes per row): one prefetch pointer walks the
  // matrix linearly ahead of the tile, NR lines per step. Long rows: each row prefetches its own line
  // ahead (a linear walk would only reach row 1 after passing row 0's end). Measured on the EPYC
  // guest, one thread: SmolLM2's K = 576 BF16 rows 19.5 GB/s linear vs 8.2 per row; F32 K = 4096
  // rows 16-18.5 GB/s per row vs 12 linear.
  const bool linear = K * static_cast<int64_t>(sizeof(typename L::T)) <= kLinearPrefetchRowBytes;
  const char* pf = reinterpret_cast<const char*>(w) + kPrefetchBytes;
  int64_t k = 0;
  for (; k + L::kElems <= K; k += L::kElems) {
    if (linear) {
      for (int j = 0; j < NR; ++j) _mm_prefetch(pf + 64 * j, _MM_HINT_T0);
      pf += 64 * NR;
    } else {
      for (int j = 0; j < NR; ++j)
        _mm_prefetch(reinterpret_cast<const char*>(w + j * K + k) + kPrefetchBytes, _MM_HINT_T0);
    }
    __m512 wv[NR][L::kVecs];
    for (int j = 0; j < NR; ++j) L::load(w + j * K + k, wv[j]);
    line_fma<MR, NR, L::kVecs>(acc, wv, xp + k, Kp);
  }
  if (k < K) {
    __m512 wv[NR][L::kVecs];
    for (int j = 0; j < NR; ++j) L::load_tail(w + j * K + k, K - k, wv[j]);
    line_fma<MR, NR, L::kVecs>(acc, wv, xp + k, Kp);
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      const float s = _mm512_reduce_add_ps(acc[i][j]);
      y[i * ldy + j] = bias ? s + bias[j] : s;
    }
}

template <DType D, int MR>
KILN_AVX512 void stream_rows_mr(const float* xp, int64_t Kp, const typename Line<D>::T* w, int64_t K,
                                const float* bias, float* y, int64_t ldy, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 2 <= n1; n += 2)
    stream_tile<D, MR, 2>(xp, Kp, w + n * K, K, bias ? bias + n : nullptr, y + n, ldy);
  if (n < n1) stream_tile<D, MR, 1>(xp, Kp, w + n * K, K, bias ? bias + n : nullptr, y + n, ldy);
}

template <DType D>
void stream_rows(const float* x, int64_t M, int64_t K, const void* wv, const float* bias, float* y, int64_t ldy,
                 int64_t n0, int64_t n1) {
  using L = Line<D>;
  const auto* w = static_cast<const typename L::T*>(wv);
  const int64_t Kp = (K + L::kElems - 1) / L::kElems * L::kElems;
  thread_local std::vector<float> xbuf;  // grows to the largest M * Kp once, then reused
  if (static_cast<int64_t>(xbuf.size()) < M * Kp) xbuf.resize(M * Kp);
  prepare_x<D>(x, M, K, Kp, xbuf.data());
  const float* xp = xbuf.data();
  switch (M) {
    case 1: return stream_rows_mr<D, 1>(xp, Kp, w, K, bias, y, ldy, n0, n1);
    case 2: return stream_rows_mr<D, 2>(xp, Kp, w, K, bias, y, ldy, n0, n1);
    case 3: return stream_rows_mr<D, 3>(xp, Kp, w, K, bias, y, ldy, n0, n1);
    case 4: return stream_rows_mr<D, 4>(xp, Kp, w, K, bias, y, ldy, n0, n1);
    case 5: return stream_rows_mr<D, 5>(xp, Kp, w, K, bias, y, ldy, n0, n1);
    case 6: return stream_rows_mr<D, 6>(xp, Kp, w, K, bias, y, ldy, n0, n1);
    case 7: return stream_rows_mr<D, 7>(xp, Kp, w, K, bias, y, ldy, n0, n1);
    default: return stream_rows_mr<D, 8>(xp, Kp, w, K, bias, y, ldy, n0, n1);
  }
}

// ---------------------------------------------------------------------------------------------
// Prefill: packed panels and the 6x64 micro-kernel.

// 16 weights of one row starting at p as f32 (n < 16: the first n, the rest 0).
template <DType D>
KILN_AVX512 inline __m512 load16(const void* base, int64_t index, int64_t n) {
  if constexpr (D == DType::F32) {
    const float* p = static_cast<const float*>(base) + index;
    return n >= 16 ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(mask16(n), p);
  } else {
    const uint16_t* p = static_cast<const uint16_t*>(base) + index;
    const __m256i raw = n >= 16 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
                                : _mm256_maskz_loadu_epi16(mask16(n), p);
    if constexpr (D == DType::F16) return _mm512_cvtph_ps(raw);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
  }
}

// In place: r[i][j] <- r[j][i] for a 16x16 block of floats.
KILN_AVX512 inline void transpose16(__m512 r[16]) {
  __m512 t[16];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // Per 128-bit lane L, after this step r[4q + j] holds column 4L + j of rows 4q..4q+3.
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q) {
    r[4 * q + 0] = _mm512_shuffle_ps(t[4 * q], t[4 * q + 2], 0x44);
    r[4 * q + 1] = _mm512_shuffle_ps(t[4 * q], t[4 * q + 2], 0xee);
    r[4 * q + 2] = _mm512_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0x44);
    r[4 * q + 3] = _mm512_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0xee);
  }
  // Gather lane L of r[j], r[4 + j], r[8 + j], r[12 + j] into column 4L + j.
  __m512 u[16];
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    const __m512 a = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x88);   // r[j].L0 L2, r[4+j].L0 L2
    const __m512 b = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xdd);   // .L1 L3
    const __m512 c = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x88);
    const __m512 d = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xdd);
    u[j] = _mm512_shuffle_f32x4(a, c, 0x88);       // lane 0: column j
    u[8 + j] = _mm512_shuffle_f32x4(a, c, 0xdd);   // lane 2: column 8 + j
    u[4 + j] = _mm512_shuffle_f32x4(b, d, 0x88);   // lane 1: column 4 + j
    u[12 + j] = _mm512_shuffle_f32x4(b, d, 0xdd);  // lane 3: column 12 + j
  }
  for (int i = 0; i < 16; ++i) r[i] = u[i];
}

// panel[k][64] = f32(w[n0 + c][k0 + k]) for c < rows (<= 64), k < kc; columns >= rows are 0.
// w rows have stride ldw elements.
template <DType D>
KILN_AVX512 void pack_panel(const void* w, int64_t ldw, int64_t n0, int64_t rows, int64_t k0, int64_t kc, float* panel) {
  for (int64_t g = 0; g < kNc / 16; ++g) {
    const int64_t c0 = 16 * g;
    for (int64_t k = 0; k < kc; k += 16) {
      const int64_t width = std::min<int64_t>(16, kc - k);
      __m512 r[16];
      for (int64_t i = 0; i < 16; ++i) {
        if (c0 + i >= rows) {
          r[i] = _mm512_setzero_ps();
          continue;
        }
        const int64_t index = (n0 + c0 + i) * ldw + k0 + k;
        // Once per 64-byte line of the row: 16 rows are 16 streams, which this core's hardware
        // prefetchers do not follow well (matmul_avx512.cc's header).
        if ((k * static_cast<int64_t>(sizeof(typename Line<D>::T))) % 64 == 0)
          _mm_prefetch(reinterpret_cast<const char*>(static_cast<const typename Line<D>::T*>(w) + index) + kPackPrefetchBytes,
                       _MM_HINT_T0);
        r[i] = load16<D>(w, index, width);
      }
      transpose16(r);
      for (int64_t i = 0; i < width; ++i) _mm512_storeu_ps(panel + (k + i) * kNc + c0, r[i]);
    }
  }
}

// y[i, 0..cols) (+)= x[i, 0..kc) · panel[0..kc)[0..cols) for i < MR. first: start from bias (or 0),
// else from y (a later K block).
template <int MR>
KILN_AVX512 void micro_kernel(const float* x, int64_t ldx, const float* panel, int64_t kc, const float* bias, bool first,
                              float* y, int64_t ldy, int64_t cols) {
  __m512 acc[MR][4];
  const __mmask16 masks[4] = {mask16(cols), mask16(std::max<int64_t>(0, cols - 16)),
                              mask16(std::max<int64_t>(0, cols - 32)), mask16(std::max<int64_t>(0, cols - 48))};
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < 4; ++v) {
      if (!first) acc[i][v] = _mm512_maskz_loadu_ps(masks[v], y + i * ldy + 16 * v);
      else if (bias) acc[i][v] = _mm512_maskz_loadu_ps(masks[v], bias + 16 * v);
      else acc[i][v] = _mm512_setzero_ps();
    }
  for (int64_t k = 0; k < kc; ++k) {
    const float* p = panel + k * kNc;
    const __m512 w0 = _mm512_loadu_ps(p), w1 = _mm512_loadu_ps(p + 16), w2 = _mm512_loadu_ps(p + 32),
                 w3 = _mm512_loadu_ps(p + 48);
    for (int i = 0; i < MR; ++i) {
      const __m512 xv = _mm512_set1_ps(x[i * ldx + k]);
      acc[i][0] = _mm512_fmadd_ps(xv, w0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(xv, w1, acc[i][1]);
      acc[i][2] = _mm512_fmadd_ps(xv, w2, acc[i][2]);
      acc[i][3] = _mm512_fmadd_ps(xv, w3, acc[i][3]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < 4; ++v) _mm512_mask_storeu_ps(y + i * ldy + 16 * v, masks[v], acc[i][v]);
}

KILN_AVX512 void sweep_panel(const float* x, int64_t M, int64_t ldx, const float* panel, int64_t kc,
                             const float* bias, bool first, float* y, int64_t ldy, int64_t cols) {
  int64_t m = 0;
  for (; m + kMr <= M; m += kMr) micro_kernel<kMr>(x + m * ldx, ldx, panel, kc, bias, first, y + m * ldy, ldy, cols);
  switch (M - m) {
    case 1: micro_kernel<1>(x + m * ldx, ldx, panel, kc, bias, first, y + m * ldy, ldy, cols); break;
    case 2: micro_kernel<2>(x + m * ldx, ldx, panel, kc, bias, first, y + m * ldy, ldy, cols); break;
    case 3: micro_kernel<3>(x + m * ldx, ldx, panel, kc, bias, first, y + m * ldy, ldy, cols); break;
    case 4: micro_kernel<4>(x + m * ldx, ldx, panel, kc, bias, first, y + m * ldy, ldy, cols); break;
    case 5: micro_kernel<5>(x + m * ldx, ldx, panel, kc, bias, first, y + m * ldy, ldy, cols); break;
    default: break;
  }
}

// ---------------------------------------------------------------------------------------------
// Prefill with BF16 weights on CPUs with AVX512_BF16: VDPBF16PS multiplies 32 BF16 pairs and adds
// each pair's two products into one of 16 f32 lanes, twice the multiply-adds per instruction of an
// f32 FMA. The activations are rounded to BF16 for it (round to nearest even), as a BF16 model's
// activations are in transformers; products and sums stay f32. The panel holds BF16 pairs
// (w[n][k], w[n][k+1]) as 32-bit words: panel[k/2][64], the same 16x16 transpose on words.

// panel[p][64] = pair (w[n0 + c][k0 + 2p], w[n0 + c][k0 + 2p + 1]) for c < rows, p < ceil(kc / 2);
// an odd kc pairs its last element with 0; columns >= rows are 0.
KILN_AVX512 void pack_panel_bf16_pairs(const uint16_t* w, int64_t ldw, int64_t n0, int64_t rows, int64_t k0,
                                       int64_t kc, float* panel) {
  for (int64_t g = 0; g < kNc / 16; ++g) {
    const int64_t c0 = 16 * g;
    for (int64_t k = 0; k < kc; k += 32) {
      const int64_t width = std::min<int64_t>(32, kc - k);
      __m512 r[16];
      for (int64_t i = 0; i < 16; ++i) {
        if (c0 + i >= rows) {
          r[i] = _mm512_setzero_ps();
          continue;
        }
        const uint16_t* src = w + (n0 + c0 + i) * ldw + k0 + k;
        _mm_prefetch(reinterpret_cast<const char*>(src) + kPackPrefetchBytes, _MM_HINT_T0);
        r[i] = _mm512_castsi512_ps(width == 32 ? _mm512_loadu_si512(src) : _mm512_maskz_loadu_epi16(mask32(width), src));
      }
      transpose16(r);
      const int64_t pairs = (width + 1) / 2;
      for (int64_t i = 0; i < pairs; ++i) _mm512_storeu_ps(panel + (k / 2 + i) * kNc + c0, r[i]);
    }
  }
}

// xb[m][p] = pair (bf16(x[m][2p]), bf16(x[m][2p + 1])) for p < ceil(K / 2), as 32-bit words.
KILN_AVX512_BF16 void round_x_bf16(const float* x, int64_t M, int64_t K, int64_t ldb, uint32_t* xb) {
  for (int64_t m = 0; m < M; ++m) {
    uint16_t* dst = reinterpret_cast<uint16_t*>(xb + m * ldb);
    for (int64_t k = 0; k < K; k += 16) {
      const int64_t n = std::min<int64_t>(16, K - k);
      const __m256bh b = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask16(n), x + m * K + k));
      _mm256_mask_storeu_epi16(dst + k, mask16(n), reinterpret_cast<const __m256i&>(b));
    }
    if (K % 2) dst[K] = 0;
  }
}

template <int MR>
KILN_AVX512_BF16 void micro_kernel_bf16(const uint32_t* xb, int64_t ldb, const float* panel, int64_t pairs,
                                        const float* bias, bool first, float* y, int64_t ldy, int64_t cols) {
  __m512 acc[MR][4];
  const __mmask16 masks[4] = {mask16(cols), mask16(std::max<int64_t>(0, cols - 16)),
                              mask16(std::max<int64_t>(0, cols - 32)), mask16(std::max<int64_t>(0, cols - 48))};
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < 4; ++v) {
      if (!first) acc[i][v] = _mm512_maskz_loadu_ps(masks[v], y + i * ldy + 16 * v);
      else if (bias) acc[i][v] = _mm512_maskz_loadu_ps(masks[v], bias + 16 * v);
      else acc[i][v] = _mm512_setzero_ps();
    }
  for (int64_t p = 0; p < pairs; ++p) {
    const float* q = panel + p * kNc;
    const __m512bh w0 = (__m512bh)_mm512_castps_si512(_mm512_loadu_ps(q));
    const __m512bh w1 = (__m512bh)_mm512_castps_si512(_mm512_loadu_ps(q + 16));
    const __m512bh w2 = (__m512bh)_mm512_castps_si512(_mm512_loadu_ps(q + 32));
    const __m512bh w3 = (__m512bh)_mm512_castps_si512(_mm512_loadu_ps(q + 48));
    for (int i = 0; i < MR; ++i) {
      const __m512bh xv = (__m512bh)_mm512_set1_epi32(static_cast<int>(xb[i * ldb + p]));
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], xv, w0);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], xv, w1);
      acc[i][2] = _mm512_dpbf16_ps(acc[i][2], xv, w2);
      acc[i][3] = _mm512_dpbf16_ps(acc[i][3], xv, w3);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < 4; ++v) _mm512_mask_storeu_ps(y + i * ldy + 16 * v, masks[v], acc[i][v]);
}

KILN_AVX512_BF16 void sweep_panel_bf16(const uint32_t* xb, int64_t M, int64_t ldb, const float* panel, int64_t pairs,
                                       const float* bias, bool first, float* y, int64_t ldy, int64_t cols) {
  int64_t m = 0;
  for (; m + kMr <= M; m += kMr)
    micro_kernel_bf16<kMr>(xb + m * ldb, ldb, panel, pairs, bias, first, y + m * ldy, ldy, cols);
  switch (M - m) {
    case 1: micro_kernel_bf16<1>(xb + m * ldb, ldb, panel, pairs, bias, first, y + m * ldy, ldy, cols); break;
    case 2: micro_kernel_bf16<2>(xb + m * ldb, ldb, panel, pairs, bias, first, y + m * ldy, ldy, cols); break;
    case 3: micro_kernel_bf16<3>(xb + m * ldb, ldb, panel, pairs, bias, first, y + m * ldy, ldy, cols); break;
    case 4: micro_kernel_bf16<4>(xb + m * ldb, ldb, panel, pairs, bias, first, y + m * ldy, ldy, cols); break;
    case 5: micro_kernel_bf16<5>(xb + m * ldb, ldb, panel, pairs, bias, first, y + m * ldy, ldy, cols); break;
    default: break;
  }
}

void packed_rows_bf16_dot(const float* x, int64_t M, int64_t K, const void* w, const float* bias, float* y,
                          int64_t ldy, int64_t n0, int64_t n1) {
  thread_local std::vector<float> panel;  // kKc / 2 pairs x 64, allocated once per thread
  thread_local std::vector<uint32_t> xb;  // M x ceil(K / 2) pairs, grows once to the largest call
  if (panel.size() < static_cast<size_t>(kKc / 2 * kNc)) panel.resize(kKc / 2 * kNc);
  const int64_t ldb = (K + 1) / 2;
  if (static_cast<int64_t>(xb.size()) < M * ldb) xb.resize(M * ldb);
  round_x_bf16(x, M, K, ldb, xb.data());
  for (int64_t n = n0; n < n1; n += kNc) {
    const int64_t rows = std::min(kNc, n1 - n);
    for (int64_t k0 = 0; k0 < K; k0 += kKc) {  // kKc is even: K blocks start on a pair
      const int64_t kc = std::min(kKc, K - k0);
      pack_panel_bf16_pairs(static_cast<const uint16_t*>(w), K, n, rows, k0, kc, panel.data());
      sweep_panel_bf16(xb.data() + k0 / 2, M, ldb, panel.data(), (kc + 1) / 2, bias ? bias + n : nullptr, k0 == 0,
                       y + n, ldy, rows);
    }
    if (K == 0)
      for (int64_t m = 0; m < M; ++m)
        for (int64_t c = 0; c < rows; ++c) y[m * ldy + n + c] = bias ? bias[n + c] : 0.0f;
  }
}

template <DType D>
void packed_rows(const float* x, int64_t M, int64_t K, const void* w, const float* bias, float* y, int64_t ldy,
                 int64_t n0, int64_t n1) {
  if constexpr (D == DType::BF16) {
    if (cpu_features().avx512_bf16) return packed_rows_bf16_dot(x, M, K, w, bias, y, ldy, n0, n1);
  }
  thread_local std::vector<float> panel;  // kKc x 64 floats, allocated once per thread
  if (panel.size() < static_cast<size_t>(kKc * kNc)) panel.resize(kKc * kNc);
  for (int64_t n = n0; n < n1; n += kNc) {
    const int64_t rows = std::min(kNc, n1 - n);
    for (int64_t k0 = 0; k0 < K; k0 += kKc) {
      const int64_t kc = std::min(kKc, K - k0);
      pack_panel<D>(w, K, n, rows, k0, kc, panel.data());
      sweep_panel(x + k0, M, K, panel.data(), kc, bias ? bias + n : nullptr, k0 == 0, y + n, ldy, rows);
    }
    if (K == 0) {
      // No K block ran: y = bias (or 0).
      for (int64_t m = 0; m < M; ++m)
        for (int64_t c = 0; c < rows; ++c) y[m * ldy + n + c] = bias ? bias[n + c] : 0.0f;
    }
  }
}

}  // namespace

void matmul_rows_avx512(const float* x, int64_t M, int64_t K, const void* w, DType w_dtype, const float* bias,
                        float* y, int64_t ldy, int64_t n0, int64_t n1) {
  const bool stream = M <= kStreamMaxRows;
  switch (w_dtype) {
    case DType::F16:
      return stream ? stream_rows<DType::F16>(x, M, K, w, bias, y, ldy, n0, n1)
                    : packed_rows<DType::F16>(x, M, K, w, bias, y, ldy, n0, n1);
    case DType::BF16:
      return stream ? stream_rows<DType::BF16>(x, M, K, w, bias, y, ldy, n0, n1)
                    : packed_rows<DType::BF16>(x, M, K, w, bias, y, ldy, n0, n1);
    default:
      return stream ? stream_rows<DType::F32>(x, M, K, w, bias, y, ldy, n0, n1)
                    : packed_rows<DType::F32>(x, M, K, w, bias, y, ldy, n0, n1);
  }
}

void matmul_f32_panel_avx512(const float* x, int64_t M, int64_t K, const float* panel, int64_t rows, const float* bias,
                             float* y, int64_t ldy) {
  // The caller's panel is row-major [rows, K] f32: pack it like any F32 weight.
  packed_rows<DType::F32>(x, M, K, panel, bias ? bias : nullptr, y, ldy, 0, rows);
}

void matmul_bf16_panel_avx512(const float* x, int64_t M, int64_t K, const uint16_t* panel, int64_t rows,
                              const float* bias, float* y, int64_t ldy) {
  packed_rows_bf16_dot(x, M, K, panel, bias, y, ldy, 0, rows);
}

KILN_AVX512_BF16 void f32_to_bf16_avx512(const float* src, int64_t n, uint16_t* dst) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256bh v = _mm512_cvtneps_pbh(_mm512_loadu_ps(src + i));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), reinterpret_cast<const __m256i&>(v));
  }
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m256bh v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, src + i));
    _mm256_mask_storeu_epi16(dst + i, m, reinterpret_cast<const __m256i&>(v));
  }
}

}  // namespace kiln::cpu
