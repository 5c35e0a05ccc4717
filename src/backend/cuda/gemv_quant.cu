// Decode GEMV over quantized weights (common/quant.h: int8 / int4 codes in 32-element blocks along K,
// a scale and optional min per (row, group)): y[m, n] = sum_k x[m, k] * W[n, k] (+ bias[n]), M <= 32,
// and `dequantize`, which expands a quantized matrix to the activation dtype for cuBLASLt (prefill).
//
// Bytes to move: the codes (K / 2 or K per row), the scales and mins (2 or 4 bytes per group each),
// x and y: int4 g128 with f16 scales and mins is 4.25 bits per weight, int8 per channel with f32
// scales 8 bits plus 4 bytes per row, against the fp16 GEMV's 16. As gemv.cu, a bandwidth kernel,
// judged by the fraction of a device-to-device copy it reaches (bench/cuda_gemv_quant_bench.cu;
// measured numbers in backend/cuda/README.md).
//
// Why tensor cores at M = 1. Each 16 bytes of int4 codes are 32 weights: 32 FMAs per row of x plus the
// unpacking, 4x the arithmetic per byte of the fp16 GEMV, which is already issue-bound at M = 8 there.
// So the kernel dequantizes into the activation dtype in registers and multiplies on mma.sync
// m16n8k16 (f32 accumulation): A = 16 weight rows x 16 k, B = x (8 columns: rows of x, M <= 8 per
// n-tile; columns past M are computed and dropped), and the cost of a multiply no longer grows with M.
//
// Fragments. A warp owns 16 rows (a tile); lane (g = lane / 4, t = lane % 4) holds rows g and g + 8 of
// the A fragment at k-slots {2t, 2t+1, 2t+8, 2t+9}, and column g of B (x row g) at the same slots.
// Since a dot product does not care in which order k is summed, the slots need not be consecutive
// elements: each lane loads its own 16-byte "unit" of codes of rows g and g + 8 (int4: one 32-element
// block; int8: 16 elements; units 4c..4c+3 of a chunk c go to t = 0..3), dequantizes it in whatever
// order the bit tricks give, and loads the x elements of that same order for B. Per unit: int4 gives
// 16 element pairs = 8 mma, int8 8 pairs = 4 mma. A unit lies in one group (groups are multiples of 32
// for int4 and 16 for int8, or the whole row), so each lane needs one scale and min per row per unit.
// tests/backend/cuda/gemv_quant_model.py replays this indexing in numpy against float64.
//
// Dequantization, in registers:
//   int4: for each 32-bit word w of the unit (bytes 4j..4j+3: elements 4j..4j+3 in the low nibbles,
//     4j+16..4j+19 in the high ones), ((w >> s) & 0x000f000f) | magic, s = 0, 4, 8, 12, is a pair of
//     act-dtype numbers magic + q (magic = 1024 in fp16, 128 in bf16: q < 16 fits the mantissa),
//     i.e. elements (4j, 4j+2), (4j+16, 4j+18), (4j+1, 4j+3), (4j+17, 4j+19); subtracting magic gives
//     q exactly, and one packed fma gives q * scale + min, rounded once to the act dtype (scale and
//     min are first rounded to it). x pairs come from x's natural pairs with one byte permute each.
//     (The magic-number conversion is FasterTransformer's / Kim et al. 2022, "Who says elephants
//     can't run", in the nibble order of GGUF's Q4_0 block.)
//   int8: each byte goes to f32 as 2^23 + (q ^ 0x80) through one byte permute (exact), minus
//     2^23 + 128, then fmaf(q, scale, min) in f32 and one rounding to the act dtype: the weight is
//     what dequantize_row gives, rounded once, i.e. the weight an fp16/bf16 engine would hold.
//
// Factored path (the default layouts: int8 per channel, int4 g128; any layout whose chunks of 4 units
// lie inside one group). The per-weight dequantization above costs a subtract and an fma per pair on
// top of the unpacking, and rounds every weight to the act dtype. When the 4 lanes t = 0..3 of an mma
// read the same group, the scale and min can wait: the codes go to the mma as magic + q exactly
// (int4: one mask-or per pair; int8 fp16: one xor per word and one byte permute per pair), the chunk's
// mma gives tmp = sum x (magic + q) per row, a second mma with an all-ones A gives sx = sum x over the
// chunk (the same for every row), and the chunk adds scale * tmp + (min - magic * scale) * sx in f32.
// No weight is rounded (products of act-dtype numbers are exact in the f32 accumulators); the price is
// cancellation against magic * scale * sx, about magic / |q| times the f32 rounding of a sum, i.e.
// ~1e-5 relative for magic 1024 or 1152, far below the act dtype's rounding of a weight.
//
// Work split (as gemv.cu): a block of 8 warps owns 8 / k_split tiles; the k_split warps of a tile take
// interleaved chunks of 4 units and combine their accumulators through shared memory. Each lane keeps
// a ring of U chunks of 2 x 16-byte code loads (and their scales and mins): a slot is refilled with the
// chunk U steps ahead as soon as it is read, so U - 1 stay in flight while one is computed (loading U,
// then computing U, left the memory idle while a warp computed). The first U are issued before the PDL
// wait (weights do not depend on the previous kernel). Code loads bypass L1 (read once); x, scales and
// mins go through it. k_split by grid size: enough warps to fill the GPU, no more.
//
// Columns of x past M: a lane of group g >= M loads x row M - 1 (a valid address; its output column
// is dropped). Elements past K (the padded codes of the last block, and whole units past the row)
// get x = 0, so they never contribute.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "backend/cuda/act_traits.cuh"
#include "backend/cuda/kernels.h"
#include "backend/cuda/launch.cuh"

namespace kiln::cuda {
namespace {

using detail::Act;

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kTileRows = 16;    // rows of W per warp (the mma's M)
constexpr int kUnitsPerChunk = 4;  // one 16-byte unit per t = lane % 4

__device__ __forceinline__ uint4 load_streaming(const uint4* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

template <class T>
__device__ __forceinline__ void mma16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __half>) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
}

// Packed pair arithmetic of the act dtype on raw 32-bit words: (v - magic) * s + m, one rounding for
// the fma (the subtraction is exact).
template <class T>
__device__ __forceinline__ uint32_t sub_fma2(uint32_t v, uint32_t magic, uint32_t s, uint32_t m) {
  using T2 = std::conditional_t<std::is_same_v<T, __half>, __half2, __nv_bfloat162>;
  T2 hv, hmagic, hs, hm;
  memcpy(&hv, &v, 4);
  memcpy(&hmagic, &magic, 4);
  memcpy(&hs, &s, 4);
  memcpy(&hm, &m, 4);
  const T2 r = __hfma2(__hsub2(hv, hmagic), hs, hm);
  uint32_t out;
  memcpy(&out, &r, 4);
  return out;
}

// int4: one word of a unit -> 4 pairs: (4j, 4j+2), (4j+16, 4j+18), (4j+1, 4j+3), (4j+17, 4j+19).
template <class T>
__device__ __forceinline__ void dequant_int4(uint32_t w, uint32_t s2, uint32_t m2, uint32_t (&p)[4]) {
  constexpr uint32_t kMagic = std::is_same_v<T, __half> ? 0x64006400u : 0x43004300u;  // 1024 / 128
  p[0] = sub_fma2<T>((w & 0x000f000fu) | kMagic, kMagic, s2, m2);
  p[1] = sub_fma2<T>(((w >> 4) & 0x000f000fu) | kMagic, kMagic, s2, m2);
  p[2] = sub_fma2<T>(((w >> 8) & 0x000f000fu) | kMagic, kMagic, s2, m2);
  p[3] = sub_fma2<T>(((w >> 12) & 0x000f000fu) | kMagic, kMagic, s2, m2);
}
// The x pairs matching dequant_int4's: xa, xb = x's natural pairs (4j, 4j+1), (4j+2, 4j+3); xc, xd =
// (4j+16, 4j+17), (4j+18, 4j+19).
__device__ __forceinline__ void x_pairs_int4(uint32_t xa, uint32_t xb, uint32_t xc, uint32_t xd, uint32_t (&p)[4]) {
  p[0] = __byte_perm(xa, xb, 0x5410);
  p[1] = __byte_perm(xc, xd, 0x5410);
  p[2] = __byte_perm(xa, xb, 0x7632);
  p[3] = __byte_perm(xc, xd, 0x7632);
}

// int8: one word (elements 4j..4j+3, signed bytes) -> 2 natural pairs (4j, 4j+1), (4j+2, 4j+3).
template <class T>
__device__ __forceinline__ void dequant_int8(uint32_t w, float s, float m, uint32_t (&p)[2]) {
  const uint32_t u = w ^ 0x80808080u;  // q + 128 per byte
  float f[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    // 0x4B0000uu = 2^23 + u exactly; minus 2^23 + 128 gives q.
    const float q = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7540u + i)) - 8388736.0f;
    f[i] = fmaf(q, s, m);
  }
  p[0] = Act<T>::from_float2(f[0], f[1]);
  p[1] = Act<T>::from_float2(f[2], f[3]);
}

// Factored path (see the header): codes to act-dtype numbers magic + q exactly, no scale, no rounding.
//   int4: ((w >> s) & 0x000f000f) | magic: q + 1024 (fp16) or q + 128 (bf16), dequant_int4's pair order.
//   int8 fp16: u = q ^ 0x80 (= q + 128) into the low byte of 0x64uu: 1024 + u = q + 1152.
//   int8 bf16: bf16 holds every int8 exactly but has no 8-bit magic range, so q goes through f32 as in
//   dequant_int8 (2^23 + u, minus 2^23 + 128) and is packed exactly: magic 0.
template <class T>
__device__ __forceinline__ void codes_int4(uint32_t w, uint32_t (&p)[4]) {
  constexpr uint32_t kMagic = std::is_same_v<T, __half> ? 0x64006400u : 0x43004300u;
  p[0] = (w & 0x000f000fu) | kMagic;
  p[1] = ((w >> 4) & 0x000f000fu) | kMagic;
  p[2] = ((w >> 8) & 0x000f000fu) | kMagic;
  p[3] = ((w >> 12) & 0x000f000fu) | kMagic;
}
template <class T>
__device__ __forceinline__ void codes_int8(uint32_t w, uint32_t (&p)[2]) {
  const uint32_t u = w ^ 0x80808080u;
  if constexpr (std::is_same_v<T, __half>) {
    p[0] = __byte_perm(u, 0x64646464u, 0x4140);  // bytes u0, 0x64, u1, 0x64
    p[1] = __byte_perm(u, 0x64646464u, 0x4342);
  } else {
    float f[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) f[i] = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7540u + i)) - 8388736.0f;
    p[0] = Act<T>::from_float2(f[0], f[1]);
    p[1] = Act<T>::from_float2(f[2], f[3]);
  }
}
// The value magic + q the factored codes carry, and the act dtype's 1.0 pair (the A fragment that turns
// an mma into the column sums of B: sum of x over the chunk).
template <class T, int kBits>
constexpr float kCodeMagic = std::is_same_v<T, __half> ? (kBits == 4 ? 1024.0f : 1152.0f) : (kBits == 4 ? 128.0f : 0.0f);
template <class T>
constexpr uint32_t kOnePair = std::is_same_v<T, __half> ? 0x3C003C00u : 0x3F803F80u;

// The E x values of row `xrow` from element k0 (zeros past K) as E / 2 natural pairs.
template <int E, bool kVecX>
__device__ __forceinline__ void load_x(const uint16_t* __restrict__ xrow, int k0, int K, uint32_t (&xw)[E / 2]) {
  if constexpr (kVecX && E == 4) {  // K % 8 == 0 and k0 % 4 == 0: inside K or wholly past it
    const uint2 q = k0 < K ? __ldg(reinterpret_cast<const uint2*>(xrow + k0)) : make_uint2(0, 0);
    xw[0] = q.x, xw[1] = q.y;
  } else if constexpr (kVecX) {  // K % 8 == 0: each 8-element vector is whole inside K or past it
#pragma unroll
    for (int v = 0; v < E / 8; ++v) {
      const int k = k0 + 8 * v;
      const uint4 q = k < K ? __ldg(reinterpret_cast<const uint4*>(xrow + k)) : make_uint4(0, 0, 0, 0);
      xw[4 * v] = q.x, xw[4 * v + 1] = q.y, xw[4 * v + 2] = q.z, xw[4 * v + 3] = q.w;
    }
  } else {
#pragma unroll
    for (int e = 0; e < E / 2; ++e) {
      const int k = k0 + 2 * e;
      const uint32_t lo = k < K ? __ldg(xrow + k) : 0u;
      const uint32_t hi = k + 1 < K ? __ldg(xrow + k + 1) : 0u;
      xw[e] = lo | (hi << 16);
    }
  }
}

__device__ __forceinline__ float load_meta(const void* __restrict__ p, int64_t i, bool f32) {
  return f32 ? __ldg(static_cast<const float*>(p) + i) : __half2float(__ldg(static_cast<const __half*>(p) + i));
}

struct QuantParams {
  const uint16_t* x;  // [M, K] act dtype, stride K
  int M, K;
  const uint8_t* codes;  // [N, row_bytes]
  int row_bytes;
  const void* scales;    // [N, groups]
  const void* mins;      // [N, groups] or null
  bool scale_f32;
  int groups;
  int units_per_group;   // group_size / elements per unit
  int upg_shift;         // log2(units_per_group) when a power of two, else -1
  int N;
  const float* bias;     // [N] or null
  void* y;               // [M, N] stride ldy
  int64_t ldy;
  bool y_f32;
  int k_split;
};

__device__ __forceinline__ int group_of(const QuantParams& p, int unit) {
  if (p.groups == 1) return 0;
  const int g = p.upg_shift >= 0 ? unit >> p.upg_shift : unit / p.units_per_group;
  return min(g, p.groups - 1);  // units past K in a new group (int8, group 16) read the last one
}

// One chunk of one lane, added to acc: the codes of rows g and g + 8 (4 words each), the chunk's
// scales and mins (per unit, or per chunk when kFactored), and xunit(nt, xw), which gives x row
// nt * 8 + g over the lane's unit as E / 2 natural pairs (zeros past K). Both kernels use it, so the
// arithmetic (and its rounding) is one piece of code.
// At NT = 1 the factored sums alternate between two accumulator sets by word, so the chunk's mma form
// two dependency chains of 4 instead of one of 8 (mma.sync's latency is ~30 cycles; at M <= 8 a warp
// computes one chunk at a time, so the chain is on the lane's critical path).
template <class T, int kBits, int NT, bool kFactored, class XUnit>
__device__ __forceinline__ void chunk_mma(const uint32_t (&wa)[4], const uint32_t (&wb)[4], float s_a, float m_a,
                                          float s_b, float m_b, XUnit&& xunit, float (&acc)[NT][4]) {
  constexpr int E = kBits == 4 ? 32 : 16;
  constexpr int kWords = 4;
  constexpr int P = kBits == 4 ? 4 : 2;  // act-dtype pairs per code word (2 or 1 mma)
  // The A fragments: the codes as magic + q (factored) or as weights (scale and min applied).
  uint32_t pa[kWords][P], pb[kWords][P];
  if constexpr (kFactored) {
#pragma unroll
    for (int j = 0; j < kWords; ++j) {
      if constexpr (kBits == 4) {
        codes_int4<T>(wa[j], pa[j]);
        codes_int4<T>(wb[j], pb[j]);
      } else {
        codes_int8<T>(wa[j], pa[j]);
        codes_int8<T>(wb[j], pb[j]);
      }
    }
  } else if constexpr (kBits == 4) {
    const uint32_t s2a = Act<T>::from_float2(s_a, s_a), m2a = Act<T>::from_float2(m_a, m_a);
    const uint32_t s2b = Act<T>::from_float2(s_b, s_b), m2b = Act<T>::from_float2(m_b, m_b);
#pragma unroll
    for (int j = 0; j < kWords; ++j) {
      dequant_int4<T>(wa[j], s2a, m2a, pa[j]);
      dequant_int4<T>(wb[j], s2b, m2b, pb[j]);
    }
  } else {
#pragma unroll
    for (int j = 0; j < kWords; ++j) {
      dequant_int8<T>(wa[j], s_a, m_a, pa[j]);
      dequant_int8<T>(wb[j], s_b, m_b, pb[j]);
    }
  }
  // Factored: tmp = the chunk's sums of x * (magic + q) for rows g, g + 8, sx = the chunk's sums of x;
  // else the products go straight into acc.
  constexpr int kChains = kFactored && NT == 1 ? 2 : 1;
  float tmp[kChains][NT][4], sx[kChains][NT][4];
  if constexpr (kFactored) {
#pragma unroll
    for (int h = 0; h < kChains; ++h)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) tmp[h][nt][i] = sx[h][nt][i] = 0.0f;
  }
  constexpr uint32_t one = kOnePair<T>;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    uint32_t xw[E / 2];
    xunit(nt, xw);
#pragma unroll
    for (int j = 0; j < kWords; ++j) {
      uint32_t xp[P];  // the x pairs in the order of pa[j] / pb[j]
      if constexpr (kBits == 4) {
        x_pairs_int4(xw[2 * j], xw[2 * j + 1], xw[8 + 2 * j], xw[8 + 2 * j + 1], xp);
      } else {
        xp[0] = xw[2 * j], xp[1] = xw[2 * j + 1];
      }
      float(&d)[4] = kFactored ? tmp[j % kChains][nt] : acc[nt];
#pragma unroll
      for (int q = 0; q < P / 2; ++q)
        mma16816<T>(d, pa[j][2 * q], pb[j][2 * q], pa[j][2 * q + 1], pb[j][2 * q + 1], xp[2 * q], xp[2 * q + 1]);
      if constexpr (kFactored) {
#pragma unroll
        for (int q = 0; q < P / 2; ++q) mma16816<T>(sx[j % kChains][nt], one, one, one, one, xp[2 * q], xp[2 * q + 1]);
      }
    }
  }
  if constexpr (kFactored) {
    // W = scale * q + min over the chunk: sum x W = scale * tmp + (min - magic * scale) * sx.
    constexpr float magic = kCodeMagic<T, kBits>;
    const float ma2 = fmaf(-magic, s_a, m_a), mb2 = fmaf(-magic, s_b, m_b);
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      float t4[4], x4[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        t4[i] = tmp[0][nt][i];
        x4[i] = sx[0][nt][i];
#pragma unroll
        for (int h = 1; h < kChains; ++h) t4[i] += tmp[h][nt][i], x4[i] += sx[h][nt][i];
      }
      acc[nt][0] = fmaf(s_a, t4[0], fmaf(ma2, x4[0], acc[nt][0]));
      acc[nt][1] = fmaf(s_a, t4[1], fmaf(ma2, x4[1], acc[nt][1]));
      acc[nt][2] = fmaf(s_b, t4[2], fmaf(mb2, x4[2], acc[nt][2]));
      acc[nt][3] = fmaf(s_b, t4[3], fmaf(mb2, x4[3], acc[nt][3]));
    }
  }
}

// The scale and min of chunk c for rows a and b (meta_a / meta_b: the rows' first group), as the lane
// with unit index c * 4 + t needs them. Factored, a lane also scales the other lanes' units of its chunk
// (the mma sums over t), so even a lane whose unit lies past the row loads the chunk's (one group for
// the whole chunk); otherwise a unit past the row gets zeros (zero weights).
template <bool kFactored>
__device__ __forceinline__ void load_chunk_meta(const QuantParams& p, int64_t meta_a, int64_t meta_b, int c, int t,
                                                int units, float& sa, float& ma, float& sb, float& mb) {
  const int unit = c * kUnitsPerChunk + t;
  if (kFactored || unit < units) {
    const int gi = group_of(p, kFactored ? c * kUnitsPerChunk : unit);
    sa = load_meta(p.scales, meta_a + gi, p.scale_f32);
    sb = load_meta(p.scales, meta_b + gi, p.scale_f32);
    ma = p.mins ? load_meta(p.mins, meta_a + gi, p.scale_f32) : 0.0f;
    mb = p.mins ? load_meta(p.mins, meta_b + gi, p.scale_f32) : 0.0f;
  } else {
    sa = sb = ma = mb = 0.0f;
  }
}

// The end of both kernels: the k_split warps of a tile combine their fragments through shared memory
// (the first warp adds the others'; same lane layout), then the first stores y (+ bias). Accumulator i
// of n-tile nt: row g (i < 2) or g + 8, column (x row) nt * 8 + 2t + (i & 1).
template <class T, int NT>
__device__ __forceinline__ void combine_and_store(const QuantParams& p, float (&partial)[kWarps][NT * 4][32], int warp,
                                                  int lane, int slice, int tile, float (&acc)[NT][4]) {
  const int g = lane / 4, t = lane % 4;
  if (p.k_split > 1) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) partial[warp][nt * 4 + i][lane] = acc[nt][i];
    __syncthreads();
    if (slice != 0) return;
    for (int s = 1; s < p.k_split; ++s)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[nt][i] += partial[warp + s][nt * 4 + i][lane];
  }
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int row = tile * kTileRows + g + (i >= 2 ? 8 : 0), m = nt * 8 + 2 * t + (i & 1);
      if (row < p.N && m < p.M) {
        const float v = acc[nt][i] + (p.bias ? p.bias[row] : 0.0f);
        if (p.y_f32) {
          static_cast<float*>(p.y)[m * p.ldy + row] = v;
        } else {
          static_cast<T*>(p.y)[m * p.ldy + row] = Act<T>::from_float(v);
        }
      }
    }
  }
}

// NT n-tiles of 8 columns: M <= 8 * NT. kFactored: the chunk's scale and min are applied to its mma
// sums (the layout keeps each chunk inside one group; gemv_quant checks), else to every weight.
template <class T, int kBits, int NT, bool kVecX, bool kFactored>
__global__ void __launch_bounds__(kThreads, 2) gemv_quant_kernel(const QuantParams p) {
  constexpr int U = NT == 1 ? 4 : NT == 2 ? 2 : 1;  // chunks in flight per lane (2 x 16-byte code loads each)
  constexpr int E = kBits == 4 ? 32 : 16;     // elements per 16-byte unit
  constexpr int kWords = 4;                   // 32-bit words per unit
  __shared__ float partial[kWarps][NT * 4][32];

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int k_split = p.k_split;
  const int tile = blockIdx.x * (kWarps / k_split) + warp / k_split, slice = warp % k_split;
  const int units = p.row_bytes / 16, chunks = (units + kUnitsPerChunk - 1) / kUnitsPerChunk;

  detail::allow_dependents();
  // Rows past N (last tile) re-read row N - 1 and are not stored.
  const int row_a = min(tile * kTileRows + g, p.N - 1), row_b = min(tile * kTileRows + g + 8, p.N - 1);
  const uint4* wa = reinterpret_cast<const uint4*>(p.codes + static_cast<int64_t>(row_a) * p.row_bytes);
  const uint4* wb = reinterpret_cast<const uint4*>(p.codes + static_cast<int64_t>(row_b) * p.row_bytes);
  const int64_t meta_a = static_cast<int64_t>(row_a) * p.groups, meta_b = static_cast<int64_t>(row_b) * p.groups;

  // A ring of U slots, each one chunk's codes (rows g and g + 8) with their scales and mins. A slot is
  // refilled with the chunk U steps ahead as soon as it is read, so U - 1 chunks stay in flight while
  // one is computed.
  uint4 ca[U], cb[U];
  float sa[U], ma[U], sb[U], mb[U];
  const auto load = [&](int u, int c) {
    const int unit = c * kUnitsPerChunk + t;
    if (unit < units) {
      ca[u] = load_streaming(wa + unit);
      cb[u] = load_streaming(wb + unit);
    } else {  // past the row: zero codes (x is zero there too)
      ca[u] = cb[u] = make_uint4(0, 0, 0, 0);
    }
    load_chunk_meta<kFactored>(p, meta_a, meta_b, c, t, units, sa[u], ma[u], sb[u], mb[u]);
  };
#pragma unroll
  for (int u = 0; u < U; ++u) load(u, slice + u * k_split);  // independent of the previous kernel
  detail::wait_for_producer();

  const uint16_t* xrows[NT];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) xrows[nt] = p.x + static_cast<int64_t>(min(nt * 8 + g, p.M - 1)) * p.K;

  float acc[NT][4];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[nt][i] = 0.0f;

  for (int c0 = slice; c0 < chunks; c0 += U * k_split) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int c = c0 + u * k_split;
      if (c >= chunks) break;  // warp-uniform
      const int k0 = (c * kUnitsPerChunk + t) * E;
      const uint32_t wa_words[kWords] = {ca[u].x, ca[u].y, ca[u].z, ca[u].w};
      const uint32_t wb_words[kWords] = {cb[u].x, cb[u].y, cb[u].z, cb[u].w};
      const float s_a = sa[u], m_a = ma[u], s_b = sb[u], m_b = mb[u];
      if (c + U * k_split < chunks) load(u, c + U * k_split);  // refill the slot: in flight from here
      chunk_mma<T, kBits, NT, kFactored>(wa_words, wb_words, s_a, m_a, s_b, m_b, [&](int nt, uint32_t(&xw)[E / 2]) {
        load_x<E, kVecX>(xrows[nt], k0, p.K, xw);
      }, acc);
    }
  }

  combine_and_store<T, NT>(p, partial, warp, lane, slice, tile, acc);
}

// Pipelined variant for M <= 8 (one n-tile), the decode case. Same fragments, chunks and arithmetic
// (chunk_mma) as gemv_quant_kernel; what differs is where the bytes wait:
//   - codes go to a per-warp ring of kPipeDepth chunks in shared memory through cp.async (16 bytes per
//     lane per row, L1 bypassed), so a lane keeps kPipeDepth - 1 chunks (2 KB... 7 KB per warp) in
//     flight without holding them in registers; the register ring holds U = 4 at most (its 8 code
//     registers per slot are what limits it). Each lane reads back only the bytes it copied itself,
//     so cp.async.wait_group is the only synchronization; a slot is refilled after the chunk's mma
//     consumed its registers (the copy lands hundreds of cycles after the read it follows).
//   - with kStageX, the block copies x [M, K] (zero-padded to whole units) into shared memory once,
//     after the PDL wait, while the first chunks are in flight: the per-chunk x reads (L2 round trips
//     the first time a block touches a K range) become shared-memory reads.
// Scales and mins stay in a register ring (4 floats per slot; mostly L1 / L2 hits: a 32-byte sector
// holds the scales of 8-16 consecutive groups).
constexpr int kPipeDepth = 8;
// Whether auto (GemvQuantTuning::pipeline == -1) picks the pipelined kernel: off until it has been
// measured against the register ring on a GPU (bench/cuda_gemv_quant_bench.cu prints both).
constexpr bool kPipelineAuto = false;
constexpr int kPipeRingBytes = kWarps * kPipeDepth * 2 * 32 * 16;  // [warp][slot][row g / g + 8][lane] 16 B

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool fill) {
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  // src-size 0 writes 16 zero bytes and reads nothing (units past the row).
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(gmem), "r"(fill ? 16 : 0) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

template <class T, int kBits, bool kFactored, bool kStageX>
__global__ void __launch_bounds__(kThreads, 2) gemv_quant_pipe_kernel(const QuantParams p, int x_ld) {
  constexpr int S = kPipeDepth;
  constexpr int E = kBits == 4 ? 32 : 16;  // elements per 16-byte unit
  constexpr int kWords = 4;
  __shared__ float partial[kWarps][4][32];  // combine_and_store's
  extern __shared__ uint4 dyn_smem[];  // the ring, then (kStageX) x as [M][x_ld]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int k_split = p.k_split;
  const int tile = blockIdx.x * (kWarps / k_split) + warp / k_split, slice = warp % k_split;
  const int units = p.row_bytes / 16, chunks = (units + kUnitsPerChunk - 1) / kUnitsPerChunk;

  detail::allow_dependents();
  const int row_a = min(tile * kTileRows + g, p.N - 1), row_b = min(tile * kTileRows + g + 8, p.N - 1);
  const uint4* wa = reinterpret_cast<const uint4*>(p.codes + static_cast<int64_t>(row_a) * p.row_bytes);
  const uint4* wb = reinterpret_cast<const uint4*>(p.codes + static_cast<int64_t>(row_b) * p.row_bytes);
  const int64_t meta_a = static_cast<int64_t>(row_a) * p.groups, meta_b = static_cast<int64_t>(row_b) * p.groups;
  uint4* ring = dyn_smem + warp * (S * 2 * 32);

  float sa[S], ma[S], sb[S], mb[S];
  // Slot u <- chunk c (nothing past the last chunk; the group is committed anyway so that the count
  // of groups per slot stays uniform).
  const auto issue = [&](int u, int c) {
    if (c < chunks) {
      const int unit = c * kUnitsPerChunk + t;
      const bool in = unit < units;
      cp_async16(ring + (2 * u) * 32 + lane, wa + (in ? unit : 0), in);
      cp_async16(ring + (2 * u + 1) * 32 + lane, wb + (in ? unit : 0), in);
      load_chunk_meta<kFactored>(p, meta_a, meta_b, c, t, units, sa[u], ma[u], sb[u], mb[u]);
    }
    cp_async_commit();
  };
#pragma unroll
  for (int u = 0; u < S; ++u) issue(u, slice + u * k_split);  // independent of the previous kernel
  detail::wait_for_producer();

  const uint16_t* xs = reinterpret_cast<const uint16_t*>(dyn_smem + kPipeRingBytes / 16);
  if constexpr (kStageX) {
    // x [M, K] -> [M][x_ld], zeros from K to the padded row length (units * E).
    uint16_t* xw = reinterpret_cast<uint16_t*>(dyn_smem + kPipeRingBytes / 16);
    const int padded = units * E;
    if (p.K % 8 == 0 && (reinterpret_cast<uintptr_t>(p.x) % 16) == 0) {
      const int vecs = padded / 8;
      for (int i = threadIdx.x; i < p.M * vecs; i += kThreads) {
        const int m = i / vecs, v = i % vecs;
        const uint4 q = 8 * v < p.K ? __ldg(reinterpret_cast<const uint4*>(p.x + static_cast<int64_t>(m) * p.K) + v)
                                    : make_uint4(0, 0, 0, 0);
        *reinterpret_cast<uint4*>(xw + m * x_ld + 8 * v) = q;
      }
    } else {
      for (int i = threadIdx.x; i < p.M * padded; i += kThreads) {
        const int m = i / padded, k = i % padded;
        xw[m * x_ld + k] = k < p.K ? __ldg(p.x + static_cast<int64_t>(m) * p.K + k) : uint16_t{0};
      }
    }
    __syncthreads();
  }
  const int xrow = min(g, p.M - 1);
  const uint16_t* xg = p.x + static_cast<int64_t>(xrow) * p.K;

  float acc[1][4] = {{0.0f, 0.0f, 0.0f, 0.0f}};
  for (int c0 = slice; c0 < chunks; c0 += S * k_split) {
#pragma unroll
    for (int u = 0; u < S; ++u) {
      const int c = c0 + u * k_split;
      if (c >= chunks) break;  // warp-uniform
      cp_async_wait<S - 1>();  // slot u's group is complete (one group per slot, committed in order)
      const uint4 qa = ring[(2 * u) * 32 + lane], qb = ring[(2 * u + 1) * 32 + lane];
      const uint32_t wa_words[kWords] = {qa.x, qa.y, qa.z, qa.w};
      const uint32_t wb_words[kWords] = {qb.x, qb.y, qb.z, qb.w};
      const int k0 = (c * kUnitsPerChunk + t) * E;
      chunk_mma<T, kBits, 1, kFactored>(wa_words, wb_words, sa[u], ma[u], sb[u], mb[u], [&](int, uint32_t(&xw)[E / 2]) {
        if constexpr (kStageX) {
          const uint4* v = reinterpret_cast<const uint4*>(xs + xrow * x_ld + k0);
#pragma unroll
          for (int i = 0; i < E / 8; ++i) {
            const uint4 q = v[i];
            xw[4 * i] = q.x, xw[4 * i + 1] = q.y, xw[4 * i + 2] = q.z, xw[4 * i + 3] = q.w;
          }
        } else {
          load_x<E, true>(xg, k0, p.K, xw);
        }
      }, acc);
      issue(u, c + S * k_split);  // refill the slot: its codes are in registers and consumed
    }
  }
  cp_async_wait<0>();  // nothing in flight into shared memory when the block exits
  combine_and_store<T, 1>(p, partial, warp, lane, slice, tile, acc);
}

// One thread per 16-byte unit: W[n, :] in the act dtype, out[N, K] dense. w = fmaf(q, scale, min)
// in f32, rounded once (the int8 GEMV's weights, bit for bit).
template <class T, int kBits, bool kVecOut>
__global__ void __launch_bounds__(256) dequantize_kernel(const QuantParams p, int64_t total_units, T* __restrict__ out) {
  constexpr int E = kBits == 4 ? 32 : 16;
  detail::allow_dependents();
  const int units = p.row_bytes / 16;
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  const bool active = i < total_units;
  const int64_t row = active ? i / units : 0;
  const int unit = active ? static_cast<int>(i % units) : 0;
  uint4 c = make_uint4(0, 0, 0, 0);
  float s = 0.0f, m = 0.0f;
  if (active) {
    c = load_streaming(reinterpret_cast<const uint4*>(p.codes + row * p.row_bytes) + unit);
    const int64_t meta = row * p.groups + group_of(p, unit);
    s = load_meta(p.scales, meta, p.scale_f32);
    m = p.mins ? load_meta(p.mins, meta, p.scale_f32) : 0.0f;
  }
  detail::wait_for_producer();  // `out` may still be read by the previous kernel
  if (!active) return;
  const uint32_t words[4] = {c.x, c.y, c.z, c.w};
  float w[E];
#pragma unroll
  for (int e = 0; e < E; ++e) {
    int q;
    if constexpr (kBits == 4) {
      const uint32_t byte = (words[(e % 16) / 4] >> (8 * (e % 4))) & 0xffu;
      q = static_cast<int>(e < 16 ? byte & 0xfu : byte >> 4);
    } else {
      q = static_cast<int>(static_cast<int8_t>((words[e / 4] >> (8 * (e % 4))) & 0xffu));
    }
    w[e] = fmaf(static_cast<float>(q), s, m);
  }
  const int k0 = unit * E;
  T* dst = out + row * p.K;
  if constexpr (kVecOut) {
#pragma unroll
    for (int v = 0; v < E / 8; ++v) {
      if (k0 + 8 * v >= p.K) break;
      float f[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) f[e] = w[8 * v + e];
      *reinterpret_cast<uint4*>(dst + k0 + 8 * v) = detail::pack8<T>(f);
    }
  } else {
#pragma unroll
    for (int e = 0; e < E; ++e)
      if (k0 + e < p.K) dst[k0 + e] = Act<T>::from_float(w[e]);
  }
}

int log2_exact(int v) {
  for (int s = 0; s < 31; ++s)
    if ((1 << s) == v) return s;
  return -1;
}

// The device's SM count, read once (the engine runs on one device).
int sm_count() {
  static std::atomic<int> cached{0};
  int sms = cached.load();
  if (sms == 0) {
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
      cudaGetLastError();
      sms = 132;
    }
    cached.store(sms);
  }
  return sms;
}

// Shared memory of the device (per block with opt-in, per SM), read once.
struct SmemLimits {
  int per_block = 0, per_sm = 0;
};
SmemLimits smem_limits() {
  static std::atomic<int> block{0}, sm{0};
  SmemLimits l{block.load(), sm.load()};
  if (l.per_block == 0) {
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&l.per_block, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&l.per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device) != cudaSuccess) {
      cudaGetLastError();
      l = {48 * 1024, 96 * 1024};
    }
    block.store(l.per_block);
    sm.store(l.per_sm);
  }
  return l;
}

// Auto's choice of kernel at M <= 8: kPipelineAuto, or KILN_CUDA_QUANT_PIPELINE=0|1 (read once; for
// measuring a whole engine with either kernel, as tools/device/quant7b.sh does).
bool pipeline_auto() {
  static const bool on = [] {
    const char* env = std::getenv("KILN_CUDA_QUANT_PIPELINE");
    return env && (env[0] == '0' || env[0] == '1') ? env[0] == '1' : kPipelineAuto;
  }();
  return on;
}

// Warps of k_split slices per tile: as many as the GPU holds at once (2 blocks of 8 warps per SM) and
// no more, each slice at least one chunk.
int auto_k_split(int64_t tiles, int64_t chunks) {
  const int64_t resident = int64_t{sm_count()} * 2 * kWarps;
  int k = 8;
  while (k > 1 && (tiles * k > resident || chunks < k)) k /= 2;
  return k;
}

// "int4 g128 f16 +min" (quant_describe's words, for messages).
std::string describe(const QuantWeightView& w) {
  const std::string group = w.group_size >= w.cols ? "per-channel" : fmt::format("g{}", w.group_size);
  return fmt::format("int{} {} {}{}", w.bits, group, w.scale_dtype == DType::F32 ? "f32" : "f16",
                     w.mins ? " +min" : "");
}

// Checks a quantized matrix (validate_quant's rules plus pointers and alignment) and fills the
// parameters shared by both kernels.
template <class Shapes>
Status quant_params(const Shapes& shapes, const QuantWeightView& w, QuantParams& p) {
  if (w.bits != 4 && w.bits != 8) return make_error("{}: {} bits (4 or 8)", shapes(), w.bits);
  const int E = w.bits == 4 ? 32 : 16;  // elements per 16-byte unit; groups are multiples of it
  if (w.group_size <= 0 || (w.group_size % E != 0 && w.group_size < w.cols))
    return make_error("{}: group size {} is not a positive multiple of {} (nor one group of all {} columns)", shapes(),
                      w.group_size, E, w.cols);
  if (w.scale_dtype != DType::F16 && w.scale_dtype != DType::F32)
    return make_error("{}: scales must be F16 or F32", shapes());
  if (w.rows <= 0 || w.cols <= 0) return make_error("{}: need N > 0 and K > 0", shapes());
  if (w.rows >= (int64_t{1} << 30) || w.cols >= (int64_t{1} << 30)) return make_error("{}: N and K must be below 2^30", shapes());
  if (w.codes == nullptr || w.scales == nullptr) return make_error("{}: null codes or scales", shapes());
  if (!detail::is_aligned16(w.codes)) return make_error("{}: codes must be 16-byte aligned", shapes());
  const size_t meta_align = w.scale_dtype == DType::F32 ? 4 : 2;
  if (reinterpret_cast<uintptr_t>(w.scales) % meta_align != 0 || reinterpret_cast<uintptr_t>(w.mins) % meta_align != 0)
    return make_error("{}: scales and mins must be aligned to their dtype", shapes());
  const int64_t padded_k = (w.cols + 31) / 32 * 32;
  p.codes = w.codes;
  p.row_bytes = static_cast<int>(w.bits == 4 ? padded_k / 2 : padded_k);
  p.scales = w.scales;
  p.mins = w.mins;
  p.scale_f32 = w.scale_dtype == DType::F32;
  p.groups = static_cast<int>((w.cols + w.group_size - 1) / w.group_size);
  // One group per row (group_size >= K) needs no group arithmetic (group_of returns 0).
  p.units_per_group = p.groups == 1 ? 1 : static_cast<int>(w.group_size / E);
  p.upg_shift = log2_exact(p.units_per_group);
  p.N = static_cast<int>(w.rows);
  p.K = static_cast<int>(w.cols);
  return Status::Ok();
}

template <class T, int kBits, int NT>
Status launch_gemv(const QuantParams& p, bool vec_x, bool factored, cudaStream_t stream) {
  const int64_t tiles = (p.N + kTileRows - 1) / kTileRows;
  const int64_t blocks = (tiles + kWarps / p.k_split - 1) / (kWarps / p.k_split);
  auto* kernel = factored ? (vec_x ? gemv_quant_kernel<T, kBits, NT, true, true> : gemv_quant_kernel<T, kBits, NT, false, true>)
                          : (vec_x ? gemv_quant_kernel<T, kBits, NT, true, false> : gemv_quant_kernel<T, kBits, NT, false, false>);
  return check(detail::launch_kernel(kernel, static_cast<unsigned>(blocks), kThreads, 0, stream, p), "gemv_quant launch");
}

template <class T, int kBits, bool kFactored, bool kStageX>
Status launch_pipe(const QuantParams& p, int x_ld, size_t smem, cudaStream_t stream) {
  const int64_t tiles = (p.N + kTileRows - 1) / kTileRows;
  const int64_t blocks = (tiles + kWarps / p.k_split - 1) / (kWarps / p.k_split);
  auto* kernel = gemv_quant_pipe_kernel<T, kBits, kFactored, kStageX>;
  // Above 48 KB, dynamic shared memory is opt-in: raised once per instantiation (the engine runs on
  // one device).
  static std::atomic<size_t> raised{48 * 1024};
  if (smem > raised.load()) {
    KILN_TRY(check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
                   "gemv_quant: raising the shared-memory limit"));
    raised.store(smem);
  }
  return check(detail::launch_kernel(kernel, static_cast<unsigned>(blocks), kThreads, smem, stream, p, x_ld),
               "gemv_quant launch");
}

template <class T, int kBits>
Status launch_pipe_any(const QuantParams& p, bool factored, bool stage_x, int x_ld, size_t smem, cudaStream_t stream) {
  if (factored) {
    return stage_x ? launch_pipe<T, kBits, true, true>(p, x_ld, smem, stream)
                   : launch_pipe<T, kBits, true, false>(p, x_ld, smem, stream);
  }
  return stage_x ? launch_pipe<T, kBits, false, true>(p, x_ld, smem, stream)
                 : launch_pipe<T, kBits, false, false>(p, x_ld, smem, stream);
}

template <class T, int kBits>
Status launch_gemv_nt(const QuantParams& p, bool vec_x, bool factored, cudaStream_t stream) {
  if (p.M <= 8) return launch_gemv<T, kBits, 1>(p, vec_x, factored, stream);
  if (p.M <= 16) return launch_gemv<T, kBits, 2>(p, vec_x, factored, stream);
  return launch_gemv<T, kBits, 4>(p, vec_x, factored, stream);
}

}  // namespace

Status gemv_quant(const void* x, int64_t M, const QuantWeightView& w, const float* bias, void* y, int64_t ldy,
                  DType act, DType y_dtype, cudaStream_t stream, const GemvQuantTuning& tuning) {
  const auto shapes = [&] {
    return fmt::format("gemv_quant [M={} K={} N={} ldy={} act={} y={} {}]", M, w.cols, w.rows, ldy, dtype_name(act),
                       dtype_name(y_dtype), describe(w));
  };
  if (act != DType::F16 && act != DType::BF16) return make_error("{}: activation dtype must be F16 or BF16", shapes());
  if (y_dtype != act && y_dtype != DType::F32) return make_error("{}: y dtype must be the activation dtype or F32", shapes());
  if (M < 1 || M > kGemvQuantMaxRows) return make_error("{}: M must be in [1, {}]", shapes(), kGemvQuantMaxRows);
  QuantParams p{};
  KILN_TRY(quant_params(shapes, w, p));
  if (ldy < w.rows) return make_error("{}: need ldy >= N", shapes());
  if (x == nullptr || y == nullptr) return make_error("{}: null pointer", shapes());
  if (reinterpret_cast<uintptr_t>(x) % 2 != 0) return make_error("{}: x must be 2-byte aligned", shapes());
  const int64_t tiles = (w.rows + kTileRows - 1) / kTileRows;
  const int64_t chunks = (p.row_bytes / 16 + kUnitsPerChunk - 1) / kUnitsPerChunk;
  int k_split = tuning.k_split != 0 ? tuning.k_split : auto_k_split(tiles, chunks);
  if (k_split != 1 && k_split != 2 && k_split != 4 && k_split != 8)
    return make_error("{}: k_split must be 1, 2, 4 or 8 (found {})", shapes(), k_split);
  p.x = static_cast<const uint16_t*>(x);
  p.M = static_cast<int>(M);
  p.bias = bias;
  p.y = y;
  p.ldy = ldy;
  p.y_f32 = y_dtype == DType::F32;
  p.k_split = k_split;
  const bool vec_x = w.cols % 8 == 0 && detail::is_aligned16(x);
  // Factored when every chunk of 4 units lies in one group.
  const bool factored = tuning.factored && (p.groups == 1 || p.units_per_group % kUnitsPerChunk == 0);
  // The pipelined kernel (M <= 8): its ring, plus x when staged, sized so that two blocks fit an SM
  // (the register ring's occupancy) unless asked for explicitly.
  const SmemLimits limits = smem_limits();
  const int E = w.bits == 4 ? 32 : 16;
  const int x_ld = p.row_bytes / 16 * E + 8;  // padded row + 16 bytes: rows start in different banks
  const size_t ring = kPipeRingBytes, x_bytes = static_cast<size_t>(M) * x_ld * 2, static_bytes = 4096 + 1024;
  const auto two_per_sm = [&](size_t dyn) { return 2 * (dyn + static_bytes) <= static_cast<size_t>(limits.per_sm); };
  const auto fits = [&](size_t dyn) { return dyn + 4096 <= static_cast<size_t>(limits.per_block); };
  if (tuning.pipeline == 1 && M > 8) return make_error("{}: the pipelined kernel takes M <= 8", shapes());
  if (tuning.stage_x == 1 && tuning.pipeline == 0) return make_error("{}: stage_x is the pipelined kernel's", shapes());
  bool pipe = M <= 8 && (tuning.pipeline == 1 || (tuning.pipeline == -1 && pipeline_auto() && two_per_sm(ring)));
  bool stage_x = false;
  if (pipe) {
    if (tuning.stage_x == 1) {
      if (!fits(ring + x_bytes))
        return make_error("{}: x does not fit shared memory ({} bytes beside the {}-byte ring)", shapes(), x_bytes, ring);
      stage_x = true;
    } else if (tuning.stage_x == -1) {
      stage_x = two_per_sm(ring + x_bytes) || !vec_x;
      if (!fits(ring + (stage_x ? x_bytes : 0))) stage_x = false;
    }
    if (!stage_x && !vec_x) {
      if (tuning.pipeline == 1 || tuning.stage_x == 0)
        return make_error("{}: x read through L1 by the pipelined kernel needs K % 8 == 0 and a 16-byte aligned x",
                          shapes());
      pipe = false;  // auto: the register ring reads any x
    }
    if (pipe && !fits(ring)) {
      if (tuning.pipeline == 1) return make_error("{}: the pipelined kernel's ring does not fit shared memory", shapes());
      pipe = false;
    }
  } else if (tuning.stage_x == 1) {
    return make_error("{}: stage_x is the pipelined kernel's (M <= 8)", shapes());
  }
  const size_t smem = ring + (stage_x ? x_bytes : 0);
  Status status = KILN_DISPATCH_ACT(act, {
    if (pipe) {
      return w.bits == 4 ? launch_pipe_any<T, 4>(p, factored, stage_x, x_ld, smem, stream)
                         : launch_pipe_any<T, 8>(p, factored, stage_x, x_ld, smem, stream);
    }
    return w.bits == 4 ? launch_gemv_nt<T, 4>(p, vec_x, factored, stream) : launch_gemv_nt<T, 8>(p, vec_x, factored, stream);
  });
  if (!status.ok()) return status.error().with_context(shapes());
  return check(cudaGetLastError(), shapes().c_str());
}

Status dequantize(const QuantWeightView& w, void* out, DType act, cudaStream_t stream) {
  const auto shapes = [&] {
    return fmt::format("dequantize [N={} K={} act={} {}]", w.rows, w.cols, dtype_name(act),
                       describe(w));
  };
  if (act != DType::F16 && act != DType::BF16) return make_error("{}: activation dtype must be F16 or BF16", shapes());
  QuantParams p{};
  KILN_TRY(quant_params(shapes, w, p));
  if (out == nullptr) return make_error("{}: null output", shapes());
  if (reinterpret_cast<uintptr_t>(out) % 2 != 0) return make_error("{}: out must be 2-byte aligned", shapes());
  const int64_t total_units = w.rows * (p.row_bytes / 16);
  const int64_t blocks = (total_units + 255) / 256;
  const bool vec = w.cols % 8 == 0 && detail::is_aligned16(out);
  Status status = KILN_DISPATCH_ACT(act, {
    auto* kernel = w.bits == 4 ? (vec ? dequantize_kernel<T, 4, true> : dequantize_kernel<T, 4, false>)
                                    : (vec ? dequantize_kernel<T, 8, true> : dequantize_kernel<T, 8, false>);
    return check(detail::launch_kernel(kernel, static_cast<unsigned>(blocks), 256, 0, stream, p, total_units,
                                       static_cast<T*>(out)),
                 "dequantize launch");
  });
  if (!status.ok()) return status.error().with_context(shapes());
  return check(cudaGetLastError(), shapes().c_str());
}

}  // namespace kiln::cuda
