// Paged KV cache write and causal attention over it (vLLM PagedAttention, Kwon et al. 2023, on the
// CPU), computed FlashAttention-style in tiles (Dao et al. 2022; FlashAttention-2's loop order).
//
// Work items. The batch's tokens are sorted by (sequence, position); a block is a sequence's tokens
// whose positions share one window of 16 (fewer when 16 x G > 64 rows, G = query heads per kv head).
// A prefill item is (block, kv head): its rows are the block's tokens x the G query heads of that kv
// head (GQA), so a K/V row is read once per item, not once per query head and token as before. A
// decode item (a one-token block) takes all kv heads, so it walks the cache in address order.
// Heaviest items first; each item writes its own output rows, no synchronization.
//
// Tiles. An item walks its positions W at a time (W = 16 on AVX-512, 8 on AVX2 and scalar):
//   stage    the tile's K and V rows, found through the block table, widened to f32 (f16: vcvtph2ps;
//            int8: vpmovsxbd + vcvtdq2ps, row scales kept apart) into L1 staging rows, slot by slot in
//            address order (a slot's kv heads are one contiguous run, so the hardware prefetcher sees
//            a stream: staging alone reads 12-15 GB/s from memory, gathering each head apart 6-8);
//   S = QKᵀ  prefill: outer products over the keys transposed W x W in registers: per head element d,
//            one key vector times RC broadcast q elements into RC score accumulators (RC <= 16 rows a
//            chunk on AVX-512, 8 on AVX2), no horizontal sums, the transpose shared by all rows;
//            decode (<= 8 rows, a GQA group): dot products over the staged rows, W partial-sum
//            vectors per row reduced to one vector of W scores by a transpose-add tree;
//   softmax  per row in f32, online: m' = max(m, max S) over the positions the row may see (the causal
//            mask: later positions are -inf), alpha = e^(m - m'), P = e^(S - m'), l = alpha l + Σ P;
//   O += PV  O = alpha O + P V, RC x CB output vectors in registers (CB column blocks when the chunk
//            has few rows, so that enough FMA chains are in flight), one value vector per key.
// At the end out = O / l. int8: each key's scale multiplies its score, each value's its weight.
//
// Threads. Items go to the pool, heaviest first. With fewer than 2 items per thread (decode of one
// or a few sequences) a sequence's positions are split into pieces of >= 64 (flash-decoding, Dao et
// al. 2023); each piece keeps (m, l, O) and merge_splits combines them: out = Σ e^(m_s - m) O_s /
// Σ e^(m_s - m) l_s.
//
// Numerics: f32 throughout with max subtraction; a score errs by <= (head_dim + 2) u Σ|q k| scale,
// an output by <= (2n + 16) u max|v| beyond that (test_paged_attention.cc checks every path against
// float64 with this bound). After staging, the f16 cache's arithmetic is the f32 cache's, so an f16
// cache gives the f32 result over the rounded values bit for bit.
//
// Traffic: an item over n positions reads 2 n head_dim x (4 | 2 | 1 + 4 / head_dim) bytes of K and
// V (f32 | f16 | int8) per kv head once, for 4 n head_dim FLOPs per row.
//
// Measured (bench on a 2-core AMD EPYC Zen 4 guest, AVX-512; SmolLM2-135M shapes: 9 query heads,
// 3 kv heads, head_dim 64, block 16; decode reads 30 layers' caches in turn, as a decode step does;
// 1 thread timed in thread CPU time, 2 in wall time; streaming read 18-20 GB/s on 1 thread;
// before = one (token, query head) per item, three passes per item):
//   decode, us per layer (KV GB/s)   1 thread before -> after          2 threads before -> after
//     f32  128 positions            14.1 (13.9) ->   9.4 (20.9)        11.6 (17.0) ->   7.1 (27.5)
//     f32 1024                       360 ( 4.4) ->   152 (10.3)         296 ( 5.3) ->    93 (16.8)
//     f32 4096                      1467 ( 4.3) ->   636 ( 9.9)        1169 ( 5.4) ->   325 (19.4)
//     f16  128                      12.9 ( 7.6) ->   8.4 (11.7)         7.9 (12.4) ->   6.8 (14.6)
//     f16 1024                       250 ( 3.2) ->   107 ( 7.3)         160 ( 4.9) ->    48 (16.5)
//     f16 4096                      1127 ( 2.8) ->   442 ( 7.1)         803 ( 3.9) ->   222 (14.1)
//   prefill, ms per layer (one sequence, causal)
//     f32 128 tokens                0.82 -> 0.33 (57 GFLOP/s)           0.46 -> 0.17 (114 GFLOP/s)
//     f32 512                       13.8 -> 4.4  (68)                   7.8 -> 2.1  (142)
//     f16 128                       0.77 -> 0.33 (58)                   0.43 -> 0.16 (117)
//     f16 512                       12.5 -> 4.4  (69)                   6.9 -> 2.1  (143)
// With one layer's cache in L2, decode runs at 24 GB/s (f32) and 13 GB/s (f16) on 1 thread: f16 is
// bound by the per-tile arithmetic (staging, scores, softmax and P V about a quarter each). From
// memory both reach 7-10 GB/s, about half the streaming read: a tile's arithmetic and the next
// tile's loads overlap only in part (a software prefetch of the next tile did not help). Splitting
// positions across 2 threads pays from 128 positions on (f16: 8.4 -> 6.8 us at 128, 2.2x at 1024).
// kiln bench (SmolLM2 bf16 engine, fp16 KV, prompt 128 + 128 generated, 1 thread): attention 0.96
// -> 0.40 ms per layer in prefill, 36 -> 19 us per layer in decode.
//
// The kernel is written once (attention_tile.inc) over an Ops struct per instruction-set level and
// included once per level, inside its namespace and compiled for its target.

// GCC 12's AVX-512 intrinsic headers self-initialize their undefined operands (`__m512 __Y = __Y;`),
// which -Wuninitialized reports at every inlined use; those values are never read.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ == 12
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <algorithm>
#include <array>
#include <cassert>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <utility>
#include <vector>

#include "backend/cpu/isa.h"
#include "backend/cpu/kernels.h"
#include "backend/cpu/simd.h"

namespace kiln::cpu {
namespace {

struct AttentionArgs {
  const float* q;  // rows of [num_heads * head_dim] at q + m * q_stride
  int64_t q_stride;
  const int32_t* token_seq;     // [M]
  const int32_t* positions;     // [M]
  const int32_t* block_tables;  // [num_seqs, max_blocks_per_seq]
  int64_t max_blocks_per_seq;
  const PagedKv* kv;
  int64_t num_heads;
  float scale;
  float* out;  // [M, num_heads * head_dim]
};

// How attention addresses each cache dtype: element type, the K and V arrays, and the per-row scales
// (int8: score = scale * k_scale * Σ q·code, value = v_scale * code; 1 for f32 and f16).
struct F32Cache {
  using T = float;
  static const T* k(const PagedKv& kv) { return kv.k_cache; }
  static const T* v(const PagedKv& kv) { return kv.v_cache; }
  static float k_scale(const PagedKv&, int64_t) { return 1.0f; }
  static float v_scale(const PagedKv&, int64_t) { return 1.0f; }
};
struct F16Cache {
  using T = uint16_t;
  static const T* k(const PagedKv& kv) { return kv.k_f16; }
  static const T* v(const PagedKv& kv) { return kv.v_f16; }
  static float k_scale(const PagedKv&, int64_t) { return 1.0f; }
  static float v_scale(const PagedKv&, int64_t) { return 1.0f; }
};
struct Int8Cache {
  using T = int8_t;
  static const T* k(const PagedKv& kv) { return kv.k_codes; }
  static const T* v(const PagedKv& kv) { return kv.v_codes; }
  static float k_scale(const PagedKv& kv, int64_t row) { return kv.k_scales[row]; }
  static float v_scale(const PagedKv& kv, int64_t row) { return kv.v_scales[row]; }
};

// Tokens order[begin, end) of one sequence, positions ascending; the last sees `keys` positions.
struct Block {
  int64_t begin, end, seq, keys;
};
// One work item: a block's tokens x the G query heads of each kv head in [kv_begin, kv_end), over key
// positions [p_begin, p_end); partial >= 0: a split item, whose per-row state goes to partials + partial.
struct Item {
  int64_t block, kv_begin, kv_end, p_begin, p_end, partial;
};
struct Plan {
  AttentionArgs args;
  int64_t group;         // query heads per kv head
  const int32_t* order;  // [M] token indices sorted by (sequence, position)
  const Block* blocks;
  const Item* items;
  float* partials;  // per split item: [kv heads][rows][2 + head_dim] = (max, Σ exp, unnormalized output)
};

// ---- scalar: W = 8 lanes as plain arrays (any CPU) ----
namespace scalar_isa {
struct Ops {
  static constexpr int W = 8;
  static constexpr int kMaxRows = 8;
  static constexpr int kDotRows = 4;
  struct V {
    float x[W];
  };
  static V zero() { return set1(0.0f); }
  static V set1(float a) {
    V v;
    for (float& e : v.x) e = a;
    return v;
  }
  static V bcast(const float* p) { return set1(*p); }
  static V load(const float* p) {
    V v;
    std::memcpy(v.x, p, sizeof v.x);
    return v;
  }
  static void store(float* p, const V& v) { std::memcpy(p, v.x, sizeof v.x); }
  static V fmadd(const V& a, const V& b, V c) {
    for (int i = 0; i < W; ++i) c.x[i] += a.x[i] * b.x[i];
    return c;
  }
  static V mul(V a, const V& b) {
    for (int i = 0; i < W; ++i) a.x[i] *= b.x[i];
    return a;
  }
  static V sub(V a, const V& b) {
    for (int i = 0; i < W; ++i) a.x[i] -= b.x[i];
    return a;
  }
  static V exp(V a) {
    for (float& e : a.x) e = std::exp(e);
    return a;
  }
  static float hmax(const V& v) { return *std::max_element(v.x, v.x + W); }
  static V reduce_lanes(const V* t) {
    V s;
    for (int j = 0; j < W; ++j) s.x[j] = hsum(t[j]);
    return s;
  }
  static float hsum(const V& v) {
    float s = 0;
    for (float e : v.x) s += e;
    return s;
  }
  static V first_lanes(V v, int n, float fill) {
    for (int i = n; i < W; ++i) v.x[i] = fill;
    return v;
  }
  template <class T>
  static V load_row(const T* p, int n) {
    V v = zero();
    for (int i = 0; i < n; ++i) v.x[i] = widen(p[i]);
    return v;
  }
  static void store_row(float* p, const V& v, int n) { std::memcpy(p, v.x, n * sizeof(float)); }
  static void transpose(V* r) {
    for (int i = 0; i < W; ++i)
      for (int j = i + 1; j < W; ++j) std::swap(r[i].x[j], r[j].x[i]);
  }

 private:
  static float widen(float x) { return x; }
  static float widen(uint16_t h) { return f16_to_f32(h); }
  static float widen(int8_t c) { return static_cast<float>(c); }
};
#define KILN_ATT_TARGET
#include "backend/cpu/attention_tile.inc"
#undef KILN_ATT_TARGET
}  // namespace scalar_isa

// ---- AVX2 + FMA + F16C: W = 8 ----
namespace avx2_isa {
struct Ops {
  static constexpr int W = 8;
  static constexpr int kMaxRows = 8;  // 8 accumulators + operands in 16 ymm registers
  static constexpr int kDotRows = 4;
  using V = __m256;
  KILN_AVX2 static V zero() { return _mm256_setzero_ps(); }
  KILN_AVX2 static V set1(float a) { return _mm256_set1_ps(a); }
  KILN_AVX2 static V bcast(const float* p) { return _mm256_broadcast_ss(p); }
  KILN_AVX2 static V load(const float* p) { return _mm256_loadu_ps(p); }
  KILN_AVX2 static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  KILN_AVX2 static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  KILN_AVX2 static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  KILN_AVX2 static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  KILN_AVX2 static V exp(V a) { return simd::exp8(a); }
  KILN_AVX2 static float hmax(V v) { return simd::hmax(v); }
  KILN_AVX2 static float hsum(V v) { return simd::hsum(v); }
  // Lane j = the sum of t[j]'s lanes: pairs interleaved and added, then pairs of pairs, then halves.
  KILN_AVX2 static V reduce_lanes(const V* t) {
    __m256 u[4];
    for (int i = 0; i < 4; ++i)
      u[i] = _mm256_add_ps(_mm256_unpacklo_ps(t[2 * i], t[2 * i + 1]),
                           _mm256_unpackhi_ps(t[2 * i], t[2 * i + 1]));
    __m256 v[2];
    for (int i = 0; i < 2; ++i) {
      const __m256d a = _mm256_castps_pd(u[2 * i]), b = _mm256_castps_pd(u[2 * i + 1]);
      v[i] = _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(a, b)),
                           _mm256_castpd_ps(_mm256_unpackhi_pd(a, b)));
    }
    return _mm256_add_ps(_mm256_permute2f128_ps(v[0], v[1], 0x20), _mm256_permute2f128_ps(v[0], v[1], 0x31));
  }
  KILN_AVX2 static V first_lanes(V v, int n, float fill) {
    return _mm256_blendv_ps(_mm256_set1_ps(fill), v, _mm256_castsi256_ps(simd::tail_mask(n)));
  }
  KILN_AVX2 static V load_row(const float* p, int n) {
    return n == W ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, simd::tail_mask(n));
  }
  // A short f16 / int8 tail goes through a zeroed buffer: AVX2 has no masked 16- or 8-bit loads.
  KILN_AVX2 static V load_row(const uint16_t* p, int n) {
    if (n == W) return simd::load8_f16(p);
    uint16_t buf[W] = {};
    std::memcpy(buf, p, n * sizeof(uint16_t));
    return simd::load8_f16(buf);
  }
  KILN_AVX2 static V load_row(const int8_t* p, int n) {
    int8_t buf[W] = {};
    std::memcpy(buf, p, n);
    const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(n == W ? p : buf));
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
  }
  KILN_AVX2 static void store_row(float* p, V v, int n) {
    if (n == W) {
      _mm256_storeu_ps(p, v);
    } else {
      _mm256_maskstore_ps(p, simd::tail_mask(n), v);
    }
  }
  KILN_AVX2 static void transpose(V* r) {
    __m256 t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
      t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
      u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
      u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);
      u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
      u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
    }
    for (int i = 0; i < 4; ++i) {
      r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
      r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
    }
  }
};
#define KILN_ATT_TARGET KILN_AVX2
#include "backend/cpu/attention_tile.inc"
#undef KILN_ATT_TARGET
}  // namespace avx2_isa

// ---- AVX-512 F/BW/VL/DQ: W = 16, masked tails ----
namespace avx512_isa {
KILN_AVX512 inline __mmask16 mask16(int n) {
  return static_cast<__mmask16>(n >= 16 ? 0xffff : (1u << n) - 1);
}

// simd::exp8 on 16 lanes, the same operations in the same order (so the same values lane for lane).
KILN_AVX512 inline __m512 exp16(__m512 x) {
  const __m512 hi = _mm512_set1_ps(88.3762626647949f);
  const __m512 lo = _mm512_set1_ps(-87.3365447504f);
  const __mmask16 underflow = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
  x = _mm512_max_ps(_mm512_min_ps(x, hi), lo);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 r2 = _mm512_mul_ps(r, r);
  p = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  const __m512i scale =
      _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_maskz_mov_ps(static_cast<__mmask16>(~underflow),
                             _mm512_mul_ps(p, _mm512_castsi512_ps(scale)));
}

struct Ops {
  static constexpr int W = 16;
  static constexpr int kMaxRows = 16;  // 16 accumulators + operands in 32 zmm registers
  static constexpr int kDotRows = 8;   // decode rows (a GQA group): scores by dot products
  using V = __m512;
  KILN_AVX512 static V zero() { return _mm512_setzero_ps(); }
  KILN_AVX512 static V set1(float a) { return _mm512_set1_ps(a); }
  KILN_AVX512 static V bcast(const float* p) { return _mm512_set1_ps(*p); }  // an FMA's {1to16} operand
  KILN_AVX512 static V load(const float* p) { return _mm512_loadu_ps(p); }
  KILN_AVX512 static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  KILN_AVX512 static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  KILN_AVX512 static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  KILN_AVX512 static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  KILN_AVX512 static V exp(V a) { return exp16(a); }
  KILN_AVX512 static float hmax(V v) { return _mm512_reduce_max_ps(v); }
  KILN_AVX512 static float hsum(V v) { return _mm512_reduce_add_ps(v); }
  // Lane j = the sum of t[j]'s lanes: pairs interleaved and added, pairs of pairs, then 128-bit lanes.
  KILN_AVX512 static V reduce_lanes(const V* t) {
    __m512 u[8];
    for (int i = 0; i < 8; ++i)
      u[i] = _mm512_add_ps(_mm512_unpacklo_ps(t[2 * i], t[2 * i + 1]),
                           _mm512_unpackhi_ps(t[2 * i], t[2 * i + 1]));
    __m512 v[4];  // 128-bit lane L of v[i]: keys 4i..4i+3, each summed over its elements in lane L
    for (int i = 0; i < 4; ++i) {
      const __m512d a = _mm512_castps_pd(u[2 * i]), b = _mm512_castps_pd(u[2 * i + 1]);
      v[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                           _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    }
    const __m512 p =
        _mm512_add_ps(_mm512_shuffle_f32x4(v[0], v[1], 0x44), _mm512_shuffle_f32x4(v[0], v[1], 0xee));
    const __m512 q =
        _mm512_add_ps(_mm512_shuffle_f32x4(v[2], v[3], 0x44), _mm512_shuffle_f32x4(v[2], v[3], 0xee));
    return _mm512_add_ps(_mm512_shuffle_f32x4(p, q, 0x88), _mm512_shuffle_f32x4(p, q, 0xdd));
  }
  KILN_AVX512 static V first_lanes(V v, int n, float fill) {
    return _mm512_mask_blend_ps(mask16(n), _mm512_set1_ps(fill), v);
  }
  KILN_AVX512 static V load_row(const float* p, int n) {
    return n == W ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(mask16(n), p);
  }
  KILN_AVX512 static V load_row(const uint16_t* p, int n) {
    return _mm512_cvtph_ps(n == W ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
                                  : _mm256_maskz_loadu_epi16(mask16(n), p));
  }
  KILN_AVX512 static V load_row(const int8_t* p, int n) {
    const __m128i bytes =
        n == W ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)) : _mm_maskz_loadu_epi8(mask16(n), p);
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes));
  }
  KILN_AVX512 static void store_row(float* p, V v, int n) { _mm512_mask_storeu_ps(p, mask16(n), v); }
  // 16 x 16: pairs of rows interleaved, then pairs of pairs, then 128-bit lanes across rows.
  KILN_AVX512 static void transpose(V* r) {
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
      t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {  // r[i + k]: column k of each 128-bit lane, rows i..i+3
      r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
      r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
      r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
      r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
    }
    for (int k = 0; k < 4; ++k) {
      const __m512 a = _mm512_shuffle_f32x4(r[k], r[4 + k], 0x88),
                   b = _mm512_shuffle_f32x4(r[k], r[4 + k], 0xdd);
      const __m512 c = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0x88),
                   d = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0xdd);
      t[k] = _mm512_shuffle_f32x4(a, c, 0x88);
      t[8 + k] = _mm512_shuffle_f32x4(a, c, 0xdd);
      t[4 + k] = _mm512_shuffle_f32x4(b, d, 0x88);
      t[12 + k] = _mm512_shuffle_f32x4(b, d, 0xdd);
    }
    for (int i = 0; i < 16; ++i) r[i] = t[i];
  }
};
#define KILN_ATT_TARGET KILN_AVX512
#include "backend/cpu/attention_tile.inc"
#undef KILN_ATT_TARGET
}  // namespace avx512_isa

// Rows (tokens x group) per prefill item at most: a tile's keys and values, once widened into L1,
// serve that many rows, and the item's state (q, o: 2 x rows x head_dim floats) stays in L1 / L2.
constexpr int64_t kItemRows = 64;
// Splitting a sequence's positions (flash-decoding) when there are fewer than kSplitItemsPerThread
// items per thread, into pieces of at least kMinSplitPositions.
constexpr int64_t kSplitItemsPerThread = 2;
constexpr int64_t kMinSplitPositions = 64;
// Work below this many multiply-adds per parallel_for chunk runs on fewer threads.
constexpr int64_t kMinChunkMacs = 32768;

// out rows of each (block, kv head) that was split: the partial softmax states merged
// (m = max m_s, out = Σ e^(m_s - m) o_s / Σ e^(m_s - m) l_s).
void merge_splits(const Plan& plan, int64_t num_items) {
  const AttentionArgs& a = plan.args;
  const int64_t hd = a.kv->head_dim, G = plan.group;
  for (int64_t first = 0, end; first < num_items; first = end) {
    const Item& item = plan.items[first];
    end = first + 1;
    if (item.partial < 0) continue;
    while (end < num_items && plan.items[end].block == item.block &&
           plan.items[end].kv_begin == item.kv_begin)
      ++end;
    const Block& block = plan.blocks[item.block];
    const int64_t rows = (block.end - block.begin) * G;
    for (int64_t h = item.kv_begin; h < item.kv_end; ++h) {
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t at = ((h - item.kv_begin) * rows + r) * (hd + 2);
        float m = -std::numeric_limits<float>::infinity();
        for (int64_t s = first; s < end; ++s) m = std::max(m, plan.partials[plan.items[s].partial + at]);
        float* out = a.out + (plan.order[block.begin + r / G] * a.num_heads + h * G + r % G) * hd;
        std::fill(out, out + hd, 0.0f);
        float sum = 0;
        for (int64_t s = first; s < end; ++s) {
          const float* part = plan.partials + plan.items[s].partial + at;
          const float w = std::exp(part[0] - m);  // 0 for a piece the row saw nothing of
          sum += w * part[1];
          for (int64_t d = 0; d < hd; ++d) out[d] += w * part[2 + d];
        }
        const float inv = 1.0f / sum;
        for (int64_t d = 0; d < hd; ++d) out[d] *= inv;
      }
    }
  }
}

}  // namespace

float quantize_kv_row(const float* x, int64_t n, int8_t* codes) {
  float amax = 0;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float scale = amax / 127.0f;
  // A zero row, or one so small that 1 / scale would overflow, stores zeros (error <= 127·FLT_MIN).
  if (!(scale >= std::numeric_limits<float>::min())) {
    std::memset(codes, 0, static_cast<size_t>(n));
    return 0.0f;
  }
  const float inv = 127.0f / amax;
  for (int64_t i = 0; i < n; ++i) {
    const float c = std::nearbyint(x[i] * inv);  // round half to even; |c| <= 127 up to one rounding of inv
    codes[i] = static_cast<int8_t>(std::min(127.0f, std::max(-127.0f, c)));
  }
  return scale;
}

namespace {

// out[i] = x[i] as a half, round to nearest even (vcvtps2ph; the tail through f32_to_f16, same bits).
KILN_AVX2 void store_f16_avx2(const float* x, uint16_t* out, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  for (; i < n; ++i) out[i] = f32_to_f16(x[i]);
}

void store_f16_scalar(const float* x, uint16_t* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = f32_to_f16(x[i]);
}

}  // namespace

void kv_cache_write(const float* k, const float* v, int64_t M, int64_t row_stride,
                    const int32_t* slot_mapping, const PagedKv& kv) {
  const int64_t row = kv.num_kv_heads * kv.head_dim;
  assert(row_stride >= row);
  void (*const store_f16)(const float*, uint16_t*, int64_t) =
      using_avx2() ? store_f16_avx2 : store_f16_scalar;
  for (int64_t m = 0; m < M; ++m) {
    const int64_t slot = slot_mapping[m];
    if (slot < 0) continue;  // padding token (vLLM's convention): nothing to store
    assert(slot < kv.num_blocks * kv.block_size);
    if (kv.dtype() == KvDtype::F16) {  // a slot's heads are one contiguous row of halves
      store_f16(k + m * row_stride, kv.k_f16 + slot * row, row);
      store_f16(v + m * row_stride, kv.v_f16 + slot * row, row);
      continue;
    }
    if (kv.is_int8()) {
      for (int64_t h = 0; h < kv.num_kv_heads; ++h) {
        const int64_t r = slot * kv.num_kv_heads + h;  // cache row of (slot, head)
        kv.k_scales[r] =
            quantize_kv_row(k + m * row_stride + h * kv.head_dim, kv.head_dim, kv.k_codes + r * kv.head_dim);
        kv.v_scales[r] =
            quantize_kv_row(v + m * row_stride + h * kv.head_dim, kv.head_dim, kv.v_codes + r * kv.head_dim);
      }
      continue;
    }
    std::memcpy(kv.k_cache + slot * row, k + m * row_stride, row * sizeof(float));
    std::memcpy(kv.v_cache + slot * row, v + m * row_stride, row * sizeof(float));
  }
}

void paged_attention(const float* q, int64_t M, int64_t q_stride, const int32_t* token_seq,
                     const int32_t* positions, const int32_t* block_tables, int64_t max_blocks_per_seq,
                     const PagedKv& kv, int64_t num_heads, float scale, float* out, ThreadPool& pool) {
  assert(kv.num_kv_heads > 0 && num_heads % kv.num_kv_heads == 0);
  assert(q_stride >= num_heads * kv.head_dim);
  if (M <= 0) return;
  const int64_t G = num_heads / kv.num_kv_heads, hd = kv.head_dim, kv_heads = kv.num_kv_heads;
  // The plan lives in the calling thread's grow-only buffers: steady state allocates nothing.
  thread_local std::vector<int32_t> order;
  thread_local std::vector<Block> blocks;
  thread_local std::vector<int64_t> by_cost;
  thread_local std::vector<Item> items;
  thread_local std::vector<float> partials;

  // Tokens grouped by sequence, positions ascending; a block is a sequence's tokens whose positions
  // share one window of block_tokens (16, or fewer so that a block has at most kItemRows rows), so
  // its rows see the same tiles, all but the diagonal one in full.
  order.resize(static_cast<size_t>(M));
  std::iota(order.begin(), order.end(), 0);
  for (int64_t m = 0; m < M; ++m)
    assert(positions[m] >= 0 && positions[m] / kv.block_size < max_blocks_per_seq);
  std::sort(order.begin(), order.end(), [&](int32_t x, int32_t y) {
    return token_seq[x] != token_seq[y]   ? token_seq[x] < token_seq[y]
           : positions[x] != positions[y] ? positions[x] < positions[y]
                                          : x < y;
  });
  int64_t block_tokens = 16;
  while (block_tokens > 1 && block_tokens * G > kItemRows) block_tokens /= 2;
  blocks.clear();
  for (int64_t i = 0; i < M;) {
    const int32_t seq = token_seq[order[i]];
    int64_t j = i + 1;
    while (j < M && token_seq[order[j]] == seq &&
           positions[order[j]] / block_tokens == positions[order[i]] / block_tokens)
      ++j;
    blocks.push_back({i, j, seq, positions[order[j - 1]] + 1});
    i = j;
  }
  // Heaviest blocks first, so the last chunks the threads claim are the small ones.
  const auto cost = [&](int64_t b) { return (blocks[b].end - blocks[b].begin) * blocks[b].keys; };
  by_cost.resize(blocks.size());
  std::iota(by_cost.begin(), by_cost.end(), 0);
  std::sort(by_cost.begin(), by_cost.end(),
            [&](int64_t x, int64_t y) { return cost(x) != cost(y) ? cost(x) > cost(y) : x < y; });

  // Few items for the threads (decode of a few sequences): split long sequences' positions.
  const int64_t threads = pool.num_threads();
  int64_t base_items = 0;
  for (const Block& block : blocks) base_items += block.end - block.begin == 1 ? 1 : kv_heads;
  const int64_t want_splits = threads > 1 && base_items < kSplitItemsPerThread * threads
                                  ? (kSplitItemsPerThread * threads + base_items - 1) / base_items
                                  : 1;
  items.clear();
  int64_t partial_floats = 0, total_macs = 0;
  for (int64_t b : by_cost) {
    const Block& block = blocks[b];
    const int64_t rows = (block.end - block.begin) * G;
    const int64_t splits = std::clamp<int64_t>(block.keys / kMinSplitPositions, 1, want_splits);
    total_macs += 2 * rows * block.keys * hd * kv_heads;
    // A one-token block (decode) takes all kv heads in one item: it reads the cache in address order.
    const int64_t heads_per_item = block.end - block.begin == 1 ? kv_heads : 1;
    for (int64_t h = 0; h < kv_heads; h += heads_per_item) {
      for (int64_t s = 0; s < splits; ++s) {
        // Pieces start on multiples of 16 positions (a tile on every level).
        const int64_t tiles = (block.keys + 15) / 16;
        const int64_t p_begin = tiles * s / splits * 16,
                      p_end = std::min(block.keys, tiles * (s + 1) / splits * 16);
        items.push_back({b, h, h + heads_per_item, p_begin, p_end, splits == 1 ? -1 : partial_floats});
        if (splits > 1) partial_floats += heads_per_item * rows * (hd + 2);
      }
    }
  }
  if (static_cast<int64_t>(partials.size()) < partial_floats)
    partials.resize(static_cast<size_t>(partial_floats));

  const Plan plan{
      {q, q_stride, token_seq, positions, block_tables, max_blocks_per_seq, &kv, num_heads, scale, out},
      G,
      order.data(),
      blocks.data(),
      items.data(),
      partials.data()};
  const int64_t num_items = static_cast<int64_t>(items.size());
  const int64_t min_chunk =
      std::max<int64_t>(1, kMinChunkMacs / std::max<int64_t>(1, total_macs / num_items));
  if (using_avx512()) {
    pool.parallel_for(num_items, min_chunk,
                      [&](int64_t b, int64_t e) { avx512_isa::attend_items(plan, b, e); });
  } else if (using_avx2()) {
    pool.parallel_for(num_items, min_chunk,
                      [&](int64_t b, int64_t e) { avx2_isa::attend_items(plan, b, e); });
  } else {
    pool.parallel_for(num_items, min_chunk,
                      [&](int64_t b, int64_t e) { scalar_isa::attend_items(plan, b, e); });
  }
  if (partial_floats > 0) merge_splits(plan, num_items);
}

}  // namespace kiln::cpu
