// matmul_quant's opt-in integer decode for int4 weights (KILN_CPU_QUANT_ACT=int8, AVX-512 VNNI):
// activations rounded to int8 per block of 32 elements, as llama.cpp's Q8_0 activations, and VPDPBUSD
// integer dot products with the codes; one float multiply-add per 4-lane block group. Not the
// default: the f32 path (matmul_quant_avx512.cc) keeps activations exact.
//
//   y[m, n] = Σ_g scale[n, g] · Σ_{b in g} d[m, b] · Σ_{k in b} qx[m, k] · q[n, k]
//             + Σ_g min[n, g] · Σ_{k in g} x[m, k]            (the exact f32 sums, as the f32 path)
//
// qx, d: quantize_activation_row's rounding on each block of 32 (d = max|x| / 127, q = round half even).
// The integer part is exact (int32); only the scale products round. Per 128 codes and row: an AND, a
// shift and an AND (the two nibble halves as bytes), two VPDPBUSD (the codes, 0..15, as the unsigned
// operand), a conversion and an FMA with the per-lane block scales: 8 vector ops where the f32 path
// needs 24. int8 weights are not taken: their f32 path already reads at the core's streaming rate, and
// a VPDPBUSD version (codes XOR 0x80 as the unsigned operand, 128 Σ qx subtracted per lane) read
// slower in measurement (SmolLM2 shapes, 1 thread: 6.5-7.3 ms per sweep against 5.4-6.1).
#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <vector>

#include "backend/cpu/isa.h"
#include "backend/cpu/matmul_internal.h"
#include "backend/cpu/matmul_quant_internal.h"
#include "backend/cpu/matmul_quant_simd.h"

#define KILN_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))

namespace kiln::cpu {
namespace {

using quant_simd::lane;
using quant_simd::mask16;
using quant_simd::meta16;

// Software prefetch distance along the codes: 4 KB measured a little faster than 2 KB here (the kernel
// consumes codes ~3x faster than the f32 one, so the same lead in time is farther in bytes).
constexpr int64_t kPrefetchBytes = 4096;

int g_int8_activations = -1;  // -1: from KILN_CPU_QUANT_ACT, read once

// y = Σ lanes (tot + the min term) + bias.
template <int MR, int NR>
KILN_VNNI KILN_INLINE void store_tile(const QuantArgs& a, int64_t n, __m512 (&tot)[MR][NR]) {
  if (a.w.mins) {
    for (int64_t g = 0; g < a.groups; g += 16)
      for (int j = 0; j < NR; ++j) {
        const __m512 mins = meta16(a, a.w.mins, n + j, g);
        for (int i = 0; i < MR; ++i)
          tot[i][j] = _mm512_fmadd_ps(mins, _mm512_maskz_loadu_ps(mask16(a.groups - g), a.xsum + i * a.groups + g), tot[i][j]);
      }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      const float s = _mm512_reduce_add_ps(tot[i][j]);
      a.y[i * a.ldy + n + j] = a.bias ? s + a.bias[n + j] : s;
    }
}

template <int MR, int NR>
KILN_VNNI KILN_INLINE void zero(__m512 (&v)[MR][NR]) {
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) v[i][j] = _mm512_setzero_ps();
}

// ---------------------------------------------------------------------------------------------
// int4: chunks of 128 codes (64 bytes per row). x side per chunk: 64 bytes of the blocks' first 16
// codes (block b at 16b), 64 of their last 16, and 16 lane scales (lane 4b + l: d of block b).

// acc[i][j] (+)= Σ lanes of chunk c · d (first: acc = instead of +=). nb: blocks in the chunk.
template <int MR, int NR, bool kFirst>
KILN_VNNI KILN_INLINE void int4_chunk(const QuantArgs& a, const QuantDotX& d, const uint8_t* rows, int64_t c, int64_t nb,
                                      const char*& pf, __m512 (&acc)[MR][NR]) {
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  __m512i lo[NR], hi[NR];
  for (int j = 0; j < NR; ++j) {
    const uint8_t* p = rows + j * a.row_bytes + 64 * c;
    const __m512i raw = nb >= 4 ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi32(mask16(4 * nb), p);
    _mm_prefetch(pf + 64 * j, _MM_HINT_T0);
    lo[j] = _mm512_and_si512(raw, low4);
    hi[j] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low4);
  }
  pf += 64 * NR;
  for (int i = 0; i < MR; ++i) {
    const int8_t* xq = d.q + i * d.ldq + 128 * c;
    const __m512i xlo = _mm512_loadu_si512(xq), xhi = _mm512_loadu_si512(xq + 64);
    const __m512 dx = _mm512_loadu_ps(d.dx + i * d.ldd + 16 * c);
    for (int j = 0; j < NR; ++j) {
      const __m512i dot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo[j], xlo), hi[j], xhi);
      const __m512 f = _mm512_cvtepi32_ps(dot);
      acc[i][j] = kFirst ? _mm512_mul_ps(f, dx) : _mm512_fmadd_ps(f, dx, acc[i][j]);
    }
  }
}

// GB: blocks per group (1: groups of 32, 2: of 64), 0: groups of a multiple of 128 or one per row.
template <int MR, int NR, int GB>
KILN_VNNI void int4_tile(const QuantArgs& a, const QuantDotX& d, int64_t n) {
  const int64_t blocks = quant_padded_k(a.K) / kQuantBlock;
  const int64_t chunks = (blocks + 3) / 4;
  const uint8_t* rows = a.w.codes + n * a.row_bytes;
  const char* pf = reinterpret_cast<const char*>(rows) + kPrefetchBytes;
  __m512 tot[MR][NR], acc[MR][NR], sv[NR];
  zero(tot);
  if constexpr (GB == 0) {
    const int64_t group_chunks = a.groups == 1 ? chunks : a.w.info.group_size / 128;
    int64_t c = 0;
    for (int64_t g = 0; g < a.groups; ++g) {
      if ((g & 15) == 0)
        for (int j = 0; j < NR; ++j) sv[j] = meta16(a, a.w.scales, n + j, g);
      const int64_t c1 = g + 1 == a.groups ? chunks : c + group_chunks;
      int4_chunk<MR, NR, true>(a, d, rows, c, blocks - 4 * c, pf, acc);
      for (++c; c < c1; ++c) int4_chunk<MR, NR, false>(a, d, rows, c, blocks - 4 * c, pf, acc);
      for (int j = 0; j < NR; ++j) {
        const __m512 s = lane(sv[j], g);
        for (int i = 0; i < MR; ++i) tot[i][j] = _mm512_fmadd_ps(acc[i][j], s, tot[i][j]);
      }
    }
  } else {
    constexpr int64_t kGroupsPerChunk = 4 / GB;
    const __m512i spread = GB == 1 ? _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3)
                                   : _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t g0 = kGroupsPerChunk * c;
      if ((g0 & 15) == 0)
        for (int j = 0; j < NR; ++j) sv[j] = meta16(a, a.w.scales, n + j, g0);
      int4_chunk<MR, NR, true>(a, d, rows, c, blocks - 4 * c, pf, acc);
      const __m512i index = _mm512_add_epi32(spread, _mm512_set1_epi32(static_cast<int>(g0 & 15)));
      for (int j = 0; j < NR; ++j) {
        const __m512 s = _mm512_permutexvar_ps(index, sv[j]);
        for (int i = 0; i < MR; ++i) tot[i][j] = _mm512_fmadd_ps(acc[i][j], s, tot[i][j]);
      }
    }
  }
  store_tile<MR, NR>(a, n, tot);
}

// ---------------------------------------------------------------------------------------------

template <int MR, int G>
KILN_VNNI void rows_mr(const QuantArgs& a, const QuantDotX& d, int64_t n0, int64_t n1) {
  constexpr int kNr = MR <= 4 ? 2 : 1;
  int64_t n = n0;
  for (; n + kNr <= n1; n += kNr) int4_tile<MR, kNr, G>(a, d, n);
  if (n < n1) int4_tile<MR, 1, G>(a, d, n);
}

template <int G>
KILN_VNNI void rows_g(const QuantArgs& a, const QuantDotX& d, int64_t n0, int64_t n1) {
  switch (a.M) {
    case 1: return rows_mr<1, G>(a, d, n0, n1);
    case 2: return rows_mr<2, G>(a, d, n0, n1);
    case 3: return rows_mr<3, G>(a, d, n0, n1);
    case 4: return rows_mr<4, G>(a, d, n0, n1);
    case 5: return rows_mr<5, G>(a, d, n0, n1);
    case 6: return rows_mr<6, G>(a, d, n0, n1);
    case 7: return rows_mr<7, G>(a, d, n0, n1);
    default: return rows_mr<8, G>(a, d, n0, n1);
  }
}

// quantize_activation_row on x[0, n) (n <= 32) into q[0, 32) (zeros past n): returns the scale.
KILN_VNNI float quantize_block(const float* x, int64_t n, int8_t* q) {
  const __mmask16 m0 = mask16(n), m1 = mask16(std::max<int64_t>(0, n - 16));
  const __m512 v0 = _mm512_maskz_loadu_ps(m0, x), v1 = _mm512_maskz_loadu_ps(m1, x + 16);
  const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
  const float scale = amax / 127.0f;
  const __m512 inv = _mm512_set1_ps(scale > 0.0f ? 1.0f / scale : 0.0f);
  const __m512 lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
  for (int h = 0; h < 2; ++h) {
    __m512 r = _mm512_roundscale_ps(_mm512_mul_ps(h ? v1 : v0, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r = _mm512_min_ps(_mm512_max_ps(r, lo), hi);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 16 * h), _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(r)));
  }
  return scale;
}

// Per x row: block b's first 16 codes at 128 (b / 4) + 16 (b % 4), its last 16 64 bytes later, and
// its scale in lanes 4b .. 4b + 3 (zeros past K).
KILN_VNNI void prepare(const float* x, int64_t M, int64_t K, int8_t* q, int64_t ldq, float* dx, int64_t ldd) {
  const int64_t blocks = quant_padded_k(K) / kQuantBlock;
  alignas(64) int8_t block[kQuantBlock];
  for (int64_t m = 0; m < M; ++m) {
    int8_t* qm = q + m * ldq;
    float* dm = dx + m * ldd;
    std::memset(qm, 0, ldq);
    std::fill(dm, dm + ldd, 0.0f);
    for (int64_t b = 0; b < blocks; ++b) {
      const float d = quantize_block(x + m * K + kQuantBlock * b, std::min(kQuantBlock, K - kQuantBlock * b), block);
      int8_t* dst = qm + 128 * (b / 4) + 16 * (b % 4);
      std::memcpy(dst, block, 16);
      std::memcpy(dst + 64, block + 16, 16);
      std::fill(dm + 4 * b, dm + 4 * b + 4, d);
    }
  }
}

}  // namespace

bool quant_int8_activations() {
  if (g_int8_activations < 0) {
    const char* env = std::getenv("KILN_CPU_QUANT_ACT");
    g_int8_activations = env && std::string_view(env) == "int8" ? 1 : 0;
  }
  return g_int8_activations == 1;
}
void set_quant_int8_activations(bool on) { g_int8_activations = on ? 1 : 0; }
void reset_quant_int8_activations() { g_int8_activations = -1; }

bool quant_dot_supports(const QuantInfo& q, int64_t K) {
  if (q.bits != 4 || q.act_bits != 0 || !using_avx512() || !cpu_features().avx512_vnni) return false;
  return quant_groups(q, K) == 1 || q.group_size == 32 || q.group_size == 64 || q.group_size % 128 == 0;
}

void prepare_quant_dot_x(const float* x, int64_t M, int64_t K, QuantDotBuffers& buf, QuantDotX& out) {
  const int64_t chunks = (quant_padded_k(K) + 127) / 128;
  out.ldq = chunks * 128;
  out.ldd = chunks * 16;
  if (static_cast<int64_t>(buf.q.size()) < M * out.ldq) buf.q.resize(M * out.ldq);
  if (static_cast<int64_t>(buf.dx.size()) < M * out.ldd) buf.dx.resize(M * out.ldd);
  prepare(x, M, K, buf.q.data(), out.ldq, buf.dx.data(), out.ldd);
  out.q = buf.q.data();
  out.dx = buf.dx.data();
}

void quant_dot_rows(const QuantArgs& a, const QuantDotX& d, int64_t n0, int64_t n1) {
  if (a.groups == 1) return rows_g<0>(a, d, n0, n1);
  if (a.w.info.group_size == 32) return rows_g<1>(a, d, n0, n1);
  if (a.w.info.group_size == 64) return rows_g<2>(a, d, n0, n1);
  return rows_g<0>(a, d, n0, n1);
}

}  // namespace kiln::cpu
