// matmul_quant's decode kernels on AVX-512 (isa.h's avx512 level): y[M, N] = x[M, K] · W[N, K]^T with W
// in common/quant.h's int8 / int4 layout, M <= kStreamMaxRows, rows [n0, n1) per call. The math is
// matmul_quant.cc's: per group, scale · Σ x·q, plus Σ_g min · Σ_{k in g} x, activations in f32.
//
// Memory: as matmul_avx512.cc, tiles of 2 weight rows (1 from M = 5), each pair one contiguous run
// of codes, with a software prefetch ~2 KB ahead along the matrix (one line per line consumed).
// Scales are converted 16 groups per instruction and broadcast per group with a permute; the min
// term is one vector FMA per 16 groups before the row's single horizontal sum.
//
// Arithmetic: int4 is compute-bound on one core, so its codes are widened with a table lookup:
// VPERMPS reads only the low 4 bits of each 32-bit index, so a 64-byte load of codes (4 blocks, 128
// codes) read as 16 dwords, shifted right by 0, 4, ..., 28, gives 8 vectors of 16 codes as floats
// (table[i] = i) with one shift and one permute each, no mask and no int-to-float conversion. Lane j
// of shift s holds the code of nibble s of dword j, i.e. element 32(j/4) + 4(j%4) + s/2 + 16(s%2)
// of the chunk; x is reordered once per call to match (prepare_quant_x_avx512). Lanes 4b..4b+3 all
// belong to block b, so groups of 32 (64) fold with a scale vector holding each block's (pair's)
// scale in its 4 (8) lanes: one FMA per chunk and x row. A last chunk of 1 or 2 blocks runs on
// 256-bit vectors (half the work). Measured: ~16 cycles per chunk and row in the kernel against 12.8
// for the bare shift + permute + FMA stream (three 512-bit ops per 16 codes, which Zen 4 issues at
// two per cycle), so SmolLM2's int4 layers read ~12 GB/s on one core: compute-bound.
// int8: VPMOVSXBD + VCVTDQ2PS per 16 codes (the codes come straight from memory into the widen);
// it reads at the core's streaming rate (~20-24 GB/s).
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <vector>

#include "backend/cpu/isa.h"
#include "backend/cpu/matmul_internal.h"
#include "backend/cpu/matmul_quant_internal.h"
#include "backend/cpu/matmul_quant_simd.h"
#include "backend/cpu/simd.h"

namespace kiln::cpu {
namespace {

using quant_simd::lane;
using quant_simd::mask16;
using quant_simd::meta16;

// Software prefetch distance along the codes, in bytes ahead of the current line of the row pair.
constexpr int64_t kPrefetchBytes = 2048;
constexpr int64_t kChunkCodes = 128;  // int4: codes per 64-byte load

template <int A, int MR, int NR>
KILN_AVX512 KILN_INLINE void zero(__m512 (&acc)[A][MR][NR]) {
  for (int r = 0; r < A; ++r)
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[r][i][j] = _mm512_setzero_ps();
}

// acc[0] += acc[1] .. acc[A-1].
template <int A, int MR, int NR>
KILN_AVX512 KILN_INLINE void combine(__m512 (&acc)[A][MR][NR]) {
  for (int r = 1; r < A; ++r)
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[0][i][j] = _mm512_add_ps(acc[0][i][j], acc[r][i][j]);
}

// y = Σ lanes (tot + the min term Σ_g min[n, g] · xsum[m, g]) + bias.
template <int MR, int NR>
KILN_AVX512 KILN_INLINE void store_tile(const QuantArgs& a, int64_t n, int64_t m, __m512 (&tot)[MR][NR]) {
  if (a.w.mins) {
    for (int64_t g = 0; g < a.groups; g += 16)
      for (int j = 0; j < NR; ++j) {
        const __m512 mins = meta16(a, a.w.mins, n + j, g);
        for (int i = 0; i < MR; ++i)
          tot[i][j] = _mm512_fmadd_ps(mins, _mm512_maskz_loadu_ps(mask16(a.groups - g), a.xsum + (m + i) * a.groups + g),
                                      tot[i][j]);
      }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      const float s = _mm512_reduce_add_ps(tot[i][j]);
      a.y[(m + i) * a.ldy + n + j] = a.bias ? s + a.bias[n + j] : s;
    }
}

// ---------------------------------------------------------------------------------------------
// int8: 16 codes per vector. GV: vectors per group (1: groups of 16, 2: of 32), 0: any (the group
// size, or the whole row, at run time). A: independent accumulator chains per output (a long group
// at one or two outputs needs 2 so the FMA latency does not bound the loop).

template <int MR, int NR, int GV, int A>
KILN_AVX512 void int8_tile(const QuantArgs& a, int64_t n) {
  const int64_t vecs = quant_padded_k(a.K) / 16;
  const int64_t gv = GV ? GV : (a.groups == 1 ? vecs : a.w.info.group_size / 16);
  const uint8_t* rows = a.w.codes + n * a.row_bytes;
  __m512 tot[1][MR][NR], sv[NR];
  zero(tot);
  const char* pf = reinterpret_cast<const char*>(rows) + kPrefetchBytes;
  int64_t v = 0;
  for (int64_t g = 0; g < a.groups; ++g) {
    if ((g & 15) == 0)
      for (int j = 0; j < NR; ++j) sv[j] = meta16(a, a.w.scales, n + j, g);
    const int64_t v1 = g + 1 == a.groups ? vecs : v + gv;
    __m512 acc[A][MR][NR];
    zero(acc);
    for (; v < v1; v += A) {  // A divides every group's vector count (2 only where it is even)
      if ((v & 3) == 0) {
        for (int j = 0; j < NR; ++j) _mm_prefetch(pf + 64 * j, _MM_HINT_T0);
        pf += 64 * NR;
      }
      for (int r = 0; r < A; ++r) {
        __m512 c[NR];
        for (int j = 0; j < NR; ++j)
          c[j] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows + j * a.row_bytes + 16 * (v + r)))));
        for (int i = 0; i < MR; ++i) {
          const __m512 xv = _mm512_loadu_ps(a.x + i * a.ldx + 16 * (v + r));
          for (int j = 0; j < NR; ++j) acc[r][i][j] = _mm512_fmadd_ps(xv, c[j], acc[r][i][j]);
        }
      }
    }
    combine(acc);
    for (int j = 0; j < NR; ++j) {
      const __m512 s = lane(sv[j], g);
      for (int i = 0; i < MR; ++i) tot[0][i][j] = _mm512_fmadd_ps(acc[0][i][j], s, tot[0][i][j]);
    }
  }
  store_tile<MR, NR>(a, n, 0, tot[0]);
}

// ---------------------------------------------------------------------------------------------
// int4: 128 codes per chunk (one 64-byte load per row). GB: blocks per group (1: groups of 32, 2:
// of 64), 0: groups of a multiple of 128 codes or one group per row (folded once per group).

// acc += x · codes of full chunk c of the NR rows.
template <int MR, int NR, int A>
KILN_AVX512 KILN_INLINE void int4_chunk(const QuantArgs& a, const uint8_t* rows, int64_t c, const char*& pf,
                                        __m512 (&acc)[A][MR][NR]) {
  const __m512 table = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m512i raw[NR];
  for (int j = 0; j < NR; ++j) {
    raw[j] = _mm512_loadu_si512(rows + j * a.row_bytes + 64 * c);
    _mm_prefetch(pf + 64 * j, _MM_HINT_T0);
  }
  pf += 64 * NR;
  const float* xc = a.x + kChunkCodes * c;
#pragma GCC unroll 8
  for (int s = 0; s < 8; ++s) {
    __m512 q[NR];
    for (int j = 0; j < NR; ++j) q[j] = _mm512_permutexvar_ps(s == 0 ? raw[j] : _mm512_srli_epi32(raw[j], 4 * s), table);
    for (int i = 0; i < MR; ++i) {
      __m512 xv = _mm512_loadu_ps(xc + i * a.ldx + 16 * s);
      if constexpr (NR > 1) asm("" : "+v"(xv));  // one load for the NR rows, not one per FMA
      for (int j = 0; j < NR; ++j) acc[s % A][i][j] = _mm512_fmadd_ps(xv, q[j], acc[s % A][i][j]);
    }
  }
}

// The last chunk c when it holds 1 or 2 blocks: the same on 256-bit vectors (lanes 0..7 of the
// chunk's layout; VPERMT2PS looks the 16-entry table up from two halves). Returns per output the
// 8 lanes' sums in acc (lanes 8..15 zero).
template <int MR, int NR>
KILN_AVX512 KILN_INLINE void int4_half_chunk(const QuantArgs& a, const uint8_t* rows, int64_t c, int64_t nb,
                                             __m512 (&out)[MR][NR]) {
  const __m256 lo = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7), hi = _mm256_setr_ps(8, 9, 10, 11, 12, 13, 14, 15);
  __m256i raw[NR];
  for (int j = 0; j < NR; ++j)
    raw[j] = _mm256_maskz_loadu_epi32(static_cast<__mmask8>((1u << (4 * nb)) - 1), rows + j * a.row_bytes + 64 * c);
  __m256 acc[2][MR][NR];
  for (int r = 0; r < 2; ++r)
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[r][i][j] = _mm256_setzero_ps();
  const float* xc = a.x + kChunkCodes * c;
#pragma GCC unroll 8
  for (int s = 0; s < 8; ++s) {
    __m256 q[NR];
    for (int j = 0; j < NR; ++j)
      q[j] = _mm256_permutex2var_ps(lo, s == 0 ? raw[j] : _mm256_srli_epi32(raw[j], 4 * s), hi);
    for (int i = 0; i < MR; ++i) {
      const __m256 xv = _mm256_loadu_ps(xc + i * a.ldx + 16 * s);
      for (int j = 0; j < NR; ++j) acc[s % 2][i][j] = _mm256_fmadd_ps(xv, q[j], acc[s % 2][i][j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) out[i][j] = _mm512_zextps256_ps512(_mm256_add_ps(acc[0][i][j], acc[1][i][j]));
}

// acc[0] += x · codes of the last chunk c, which holds nb < 4 blocks.
template <int MR, int NR, int A>
KILN_AVX512 KILN_INLINE void int4_tail(const QuantArgs& a, const uint8_t* rows, int64_t c, int64_t nb,
                                       __m512 (&acc)[A][MR][NR]) {
  if (nb <= 2) {
    __m512 part[MR][NR];
    int4_half_chunk<MR, NR>(a, rows, c, nb, part);
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[0][i][j] = _mm512_add_ps(acc[0][i][j], part[i][j]);
    return;
  }
  const __m512 table = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m512i raw[NR];
  for (int j = 0; j < NR; ++j) raw[j] = _mm512_maskz_loadu_epi32(mask16(4 * nb), rows + j * a.row_bytes + 64 * c);
  const float* xc = a.x + kChunkCodes * c;
#pragma GCC unroll 8
  for (int s = 0; s < 8; ++s) {
    __m512 q[NR];
    for (int j = 0; j < NR; ++j) q[j] = _mm512_permutexvar_ps(s == 0 ? raw[j] : _mm512_srli_epi32(raw[j], 4 * s), table);
    for (int i = 0; i < MR; ++i) {
      const __m512 xv = _mm512_loadu_ps(xc + i * a.ldx + 16 * s);
      for (int j = 0; j < NR; ++j) acc[s % A][i][j] = _mm512_fmadd_ps(xv, q[j], acc[s % A][i][j]);
    }
  }
}

template <int MR, int NR, int GB, int A>
KILN_AVX512 void int4_tile(const QuantArgs& a, int64_t n) {
  const int64_t blocks = quant_padded_k(a.K) / kQuantBlock;
  const int64_t full = blocks / 4, tail = blocks % 4;  // whole chunks, blocks in the last partial one
  const uint8_t* rows = a.w.codes + n * a.row_bytes;
  __m512 tot[MR][NR], sv[NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) tot[i][j] = _mm512_setzero_ps();
  const char* pf = reinterpret_cast<const char*>(rows) + kPrefetchBytes;
  __m512 acc[A][MR][NR];
  if constexpr (GB == 0) {
    const int64_t group_chunks = a.groups == 1 ? full + 1 : a.w.info.group_size / kChunkCodes;
    int64_t c = 0;
    for (int64_t g = 0; g < a.groups; ++g) {
      if ((g & 15) == 0)
        for (int j = 0; j < NR; ++j) sv[j] = meta16(a, a.w.scales, n + j, g);
      const bool last = g + 1 == a.groups;
      const int64_t c1 = last ? full : c + group_chunks;
      zero(acc);
      for (; c < c1; ++c) int4_chunk<MR, NR, A>(a, rows, c, pf, acc);
      if (last && tail) int4_tail<MR, NR, A>(a, rows, c, tail, acc);
      combine(acc);
      for (int j = 0; j < NR; ++j) {
        const __m512 s = lane(sv[j], g);
        for (int i = 0; i < MR; ++i) tot[i][j] = _mm512_fmadd_ps(acc[0][i][j], s, tot[i][j]);
      }
    }
  } else {
    // Lane j of chunk c's scale vector: group (4 / GB) c + j / (4 GB) of the row, from sv (16 groups).
    constexpr int64_t kGroupsPerChunk = 4 / GB;
    const __m512i spread = GB == 1 ? _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3)
                                   : _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    for (int64_t c = 0; c < full + (tail ? 1 : 0); ++c) {
      const int64_t g0 = kGroupsPerChunk * c;
      if ((g0 & 15) == 0)
        for (int j = 0; j < NR; ++j) sv[j] = meta16(a, a.w.scales, n + j, g0);
      zero(acc);
      if (c < full) int4_chunk<MR, NR, A>(a, rows, c, pf, acc);
      else int4_tail<MR, NR, A>(a, rows, c, tail, acc);
      combine(acc);
      const __m512i index = _mm512_add_epi32(spread, _mm512_set1_epi32(static_cast<int>(g0 & 15)));
      for (int j = 0; j < NR; ++j) {
        const __m512 s = _mm512_permutexvar_ps(index, sv[j]);
        for (int i = 0; i < MR; ++i) tot[i][j] = _mm512_fmadd_ps(acc[0][i][j], s, tot[i][j]);
      }
    }
  }
  store_tile<MR, NR>(a, n, 0, tot);
}

// ---------------------------------------------------------------------------------------------
// Row loops: tiles of 2 weight rows (1 for the last odd row) at M <= 4, 1 row at M = 5..8, with
// all M activation rows per tile.

template <int MR, int NR, int G>
KILN_AVX512 void tile(const QuantArgs& a, int64_t n) {
  // One x row: 2 chains per output. Depends on MR only, so a row's sum is the same in a pair or alone.
  constexpr int kChains = MR >= 2 ? 1 : 2;
  if (a.w.info.bits == 8) {
    int8_tile<MR, NR, G, G == 0 ? kChains : 1>(a, n);  // groups of 16 or 32 are short chains already
  } else {
    int4_tile<MR, NR, G, kChains>(a, n);
  }
}

template <int MR, int G>
KILN_AVX512 void rows_mr(const QuantArgs& a, int64_t n0, int64_t n1) {
  constexpr int kNr = MR <= 4 ? 2 : 1;
  int64_t n = n0;
  for (; n + kNr <= n1; n += kNr) tile<MR, kNr, G>(a, n);
  if (n < n1) tile<MR, 1, G>(a, n);
}

template <int G>
KILN_AVX512 void rows_g(const QuantArgs& a, int64_t n0, int64_t n1) {
  switch (a.M) {
    case 1: return rows_mr<1, G>(a, n0, n1);
    case 2: return rows_mr<2, G>(a, n0, n1);
    case 3: return rows_mr<3, G>(a, n0, n1);
    case 4: return rows_mr<4, G>(a, n0, n1);
    case 5: return rows_mr<5, G>(a, n0, n1);
    case 6: return rows_mr<6, G>(a, n0, n1);
    case 7: return rows_mr<7, G>(a, n0, n1);
    default: return rows_mr<8, G>(a, n0, n1);
  }
}

}  // namespace

bool quant_decode_avx512_supports(const QuantInfo& q, int64_t K) {
  if (quant_groups(q, K) == 1) return true;
  if (q.bits == 8) return q.group_size == 16 || q.group_size % 32 == 0;  // an even vector count per group
  return q.group_size == 32 || q.group_size == 64 || q.group_size % kChunkCodes == 0;
}

int64_t quant_x_stride_avx512(int bits, int64_t K) {
  return bits == 4 ? (K + kChunkCodes - 1) / kChunkCodes * kChunkCodes : quant_padded_k(K);
}

void prepare_quant_x_avx512(int bits, const float* x, int64_t M, int64_t K, float* xp) {
  const int64_t ld = quant_x_stride_avx512(bits, K);
  // Lane j of shift s in a chunk reads element 32(j/4) + 4(j%4) + s/2 + 16(s%2) (see the top).
  static const auto order = [] {
    std::array<int, kChunkCodes> o{};
    for (int s = 0; s < 8; ++s)
      for (int j = 0; j < 16; ++j) o[16 * s + j] = 32 * (j / 4) + 4 * (j % 4) + s / 2 + 16 * (s % 2);
    return o;
  }();
  for (int64_t m = 0; m < M; ++m) {
    const float* src = x + m * K;
    float* dst = xp + m * ld;
    if (bits == 8) {
      if (K > 0) std::memcpy(dst, src, K * sizeof(float));
      std::fill(dst + K, dst + ld, 0.0f);
      continue;
    }
    int64_t c = 0;
    for (; c + kChunkCodes <= K; c += kChunkCodes)
      for (int i = 0; i < kChunkCodes; ++i) dst[c + i] = src[c + order[i]];
    for (; c < ld; c += kChunkCodes)
      for (int i = 0; i < kChunkCodes; ++i) dst[c + i] = c + order[i] < K ? src[c + order[i]] : 0.0f;
  }
}

void quant_rows_avx512(const QuantArgs& a, int64_t n0, int64_t n1) {
  const QuantInfo& q = a.w.info;
  if (a.groups == 1) return rows_g<0>(a, n0, n1);
  if (q.bits == 8) {
    if (q.group_size == 16) return rows_g<1>(a, n0, n1);
    if (q.group_size == 32) return rows_g<2>(a, n0, n1);
    return rows_g<0>(a, n0, n1);
  }
  if (q.group_size == 32) return rows_g<1>(a, n0, n1);
  if (q.group_size == 64) return rows_g<2>(a, n0, n1);
  return rows_g<0>(a, n0, n1);
}

}  // namespace kiln::cpu
