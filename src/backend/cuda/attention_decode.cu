// Split-K paged attention ("flash-decoding", Dao et al. 2023; vLLM PagedAttention v2): for query
// rows with few siblings (decode tokens, short or mixed tiles) the context is cut into chunks
// (decode_chunk, attention_common.cuh); one CTA computes the partial softmax (max, sum, unnormalized
// output) of one (token, GQA group, chunk) and the last of those CTAs to finish merges the partials:
//   out = Σ_s 2^(m_s - m) acc_s / Σ_s 2^(m_s - m) l_s,   m = max_s m_s
// One CTA serves up to HEADS (8) query heads of one KV head, so each K/V row is read once for the
// whole group; without GQA, HEADS = 1 (a quarter of the registers: 4x the CTAs per SM). Lanes read K/V in 16-byte vectors: a row of head_dim is covered by LANES lanes
// (head_dim / 8 rounded up to a power of two), the other lanes of the warp take other positions.
// Bytes: 2 · context · num_kv_heads · head_dim · sizeof(act) per token (the cache is read once);
// FLOPs: 4 · context · num_heads · head_dim. Memory-bound for GQA groups up to ~8.
//
// Latency, not bandwidth, bounds small batches (batch 1 at context 512 reads 8 MB, ~3 us of HBM
// time), so the kernel keeps the chain of dependent memory accesses short: a CTA issues its first
// K and V loads together, before it stages q, and each later step's loads are issued before the
// current step is consumed (register double-buffering); a chunk of kDecodeMinChunk positions is one
// step. The merge needs no second kernel (threadfence reduction, as in the CUDA samples): each CTA
// publishes its partials, fences, and counts itself in an arrival counter of its (token, head tile);
// the CTA that arrives last merges. atomicInc wraps the counter back to 0 at the last arrival, so the
// counters (kDecodeCounterSlots at the front of the workspace, zero-filled once by the caller) are
// zero again after every call and a replayed CUDA graph needs no reset node. A context that fits one
// chunk is written directly by its only CTA.
#include <atomic>
#include <cfloat>

#include "backend/cuda/act_traits.cuh"
#include "backend/cuda/attention_common.cuh"
#include "backend/cuda/launch.cuh"

namespace kiln::cuda::attention {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxHeadsPerCta = 8;
constexpr int kSubChunk = 256;  // positions scored per round (the shared score buffer)

using detail::warp_max;
using detail::warp_sum;

// Where one lane's K/V vectors of one step live: position base + u * KEYS + key_slot, 16-byte
// vector `sub` of its row; rows[u] < 0 when the position is past `limit` (or the lane idle), and
// kNewRow for position `newest` (the token's own, not yet in the cache: paged_attention_decode).
// `blocks` holds the block-table entries from block `origin` on (the global table with origin 0, or
// the round's entries staged in shared memory: then no table load sits in front of each K/V load).
constexpr int64_t kNewRow = -2;
template <int UNROLL, int KEYS>
__device__ __forceinline__ void step_rows(const Params& p, const int32_t* blocks, int origin, int kv_head,
                                          int base, int limit, int newest, int key_slot, int sub, bool active,
                                          int64_t (&rows)[UNROLL]) {
  const int vecs_per_row = p.head_dim / 8;
#pragma unroll
  for (int u = 0; u < UNROLL; ++u) {
    const int pos = base + u * KEYS + key_slot;
    if (pos < limit && active) {
      const int64_t block = blocks[pos / p.block_size - origin];
      const int64_t slot = block * p.block_size + pos % p.block_size;
      rows[u] = pos == newest ? kNewRow : (slot * p.num_kv_heads + kv_head) * vecs_per_row + sub;
    } else {
      rows[u] = -1;
    }
  }
}

// 16-byte vector `sub` of a head row (head_dim wide, at `row`) and, when `rotate`, what RoPE at
// `position` needs: for HF pairing its partner vector (half / 8 vectors away; half is a multiple of 8,
// checked by the host, so pairs never straddle vectors), and the cos / sin of its pairs. All loads are
// issued here and consumed in rope_vec: a thread's vectors (q, the token's own k or v) cost one round
// trip together. rope_vec then gives the floats rope_kv_write would store (rope_rotate), bit for bit.
struct RopeInputs {
  uint4 x, partner;
  float4 c0, c1, s0, s1;  // interleaved pairing: c0 / s0 only
};
template <class T>
__device__ __forceinline__ RopeInputs load_rope_inputs(const Params& p, const T* row, int sub, int position,
                                                       bool rotate) {
  RopeInputs in{};
  in.x = *reinterpret_cast<const uint4*>(row + sub * 8);
  if (!rotate) return in;
  const int half = p.head_dim / 2;
  const int64_t t = static_cast<int64_t>(position) * half;
  if (p.rope_interleaved) {  // pairs (2j, 2j + 1) inside the vector: j = 4 sub .. 4 sub + 3
    in.c0 = *reinterpret_cast<const float4*>(p.rope_cos + t + sub * 4);
    in.s0 = *reinterpret_cast<const float4*>(p.rope_sin + t + sub * 4);
  } else {  // pairs (j, j + half)
    const int d0 = sub * 8;
    const bool low = d0 < half;
    const int j0 = low ? d0 : d0 - half;
    in.partner = *reinterpret_cast<const uint4*>(row + (low ? d0 + half : d0 - half));
    in.c0 = *reinterpret_cast<const float4*>(p.rope_cos + t + j0);
    in.c1 = *reinterpret_cast<const float4*>(p.rope_cos + t + j0 + 4);
    in.s0 = *reinterpret_cast<const float4*>(p.rope_sin + t + j0);
    in.s1 = *reinterpret_cast<const float4*>(p.rope_sin + t + j0 + 4);
  }
  return in;
}
template <class T>
__device__ __forceinline__ void rope_vec(const Params& p, const RopeInputs& in, int sub, bool rotate, float (&x)[8]) {
  unpack8<T>(in.x, x);
  if (!rotate) return;
  if (p.rope_interleaved) {
    detail::rope_rotate(x[0], x[1], in.c0.x, in.s0.x);
    detail::rope_rotate(x[2], x[3], in.c0.y, in.s0.y);
    detail::rope_rotate(x[4], x[5], in.c0.z, in.s0.z);
    detail::rope_rotate(x[6], x[7], in.c0.w, in.s0.w);
    return;
  }
  const bool low = sub * 8 < p.head_dim / 2;
  float y[8];
  unpack8<T>(in.partner, y);
  const float c[8] = {in.c0.x, in.c0.y, in.c0.z, in.c0.w, in.c1.x, in.c1.y, in.c1.z, in.c1.w};
  const float sn[8] = {in.s0.x, in.s0.y, in.s0.z, in.s0.w, in.s1.x, in.s1.y, in.s1.z, in.s1.w};
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    float a = low ? x[e] : y[e], b = low ? y[e] : x[e];
    detail::rope_rotate(a, b, c[e], sn[e]);
    x[e] = low ? a : b;
  }
}

// `fresh`: the token's own row (shared memory, filled from new_k / new_v) for kNewRow entries; null
// before it is filled (those entries are patched after the barrier).
template <int UNROLL>
__device__ __forceinline__ void load_step(const uint4* cache, const int64_t (&rows)[UNROLL], const uint4* fresh,
                                          int sub, uint4 (&raw)[UNROLL]) {
#pragma unroll
  for (int u = 0; u < UNROLL; ++u) {
    raw[u] = rows[u] >= 0                          ? cache[rows[u]]
             : fresh != nullptr && rows[u] == kNewRow ? fresh[sub]
                                                       : make_uint4(0, 0, 0, 0);
  }
}

// One warp merges the `used` partials of one (token, head): lane s holds split s (and s + 32) of the
// (max, sum) pairs; each lane owns 4 of the head's dims per 128. Partials written by other CTAs of
// this grid are read with __ldcg (L2; L1 is not coherent).
template <class T>
__device__ __forceinline__ void merge_head(const Params& p, int m, int head, int splits, int used,
                                           const float* partials) {
  static_assert(kDecodeMaxSplits <= 64, "two splits per lane");
  const int lane = threadIdx.x % 32;
  const int D = p.head_dim;
  const int64_t row0 = (static_cast<int64_t>(m) * p.num_heads + head) * splits;
  const float* acc = partials + row0 * D;
  // The accumulators of the first kPre splits (first 128 dims) are loaded with the (max, sum) pairs,
  // not after them: one round trip to L2 instead of two. Summed in the same order as the rest.
  constexpr int kPre = 8;
  float4 pre[kPre];
#pragma unroll
  for (int s = 0; s < kPre; ++s) {
    pre[s] = s < used && lane * 4 < D ? __ldcg(reinterpret_cast<const float4*>(acc + static_cast<int64_t>(s) * D + lane * 4))
                                      : make_float4(0.f, 0.f, 0.f, 0.f);
  }
  const float* ml = partials + static_cast<int64_t>(p.num_tokens) * p.num_heads * splits * D + row0 * 2;
  const float m0 = lane < used ? __ldcg(ml + lane * 2) : -FLT_MAX, l0 = lane < used ? __ldcg(ml + lane * 2 + 1) : 0.f;
  const float m1 = lane + 32 < used ? __ldcg(ml + (lane + 32) * 2) : -FLT_MAX;
  const float l1 = lane + 32 < used ? __ldcg(ml + (lane + 32) * 2 + 1) : 0.f;
  const float m_all = warp_max(fmaxf(m0, m1));
  const float w0 = lane < used ? exp2f(m0 - m_all) : 0.f, w1 = lane + 32 < used ? exp2f(m1 - m_all) : 0.f;
  const float inv = 1.f / warp_sum(w0 * l0 + w1 * l1);
  T* out = static_cast<T*>(p.out) + (static_cast<int64_t>(m) * p.num_heads + head) * D;
  for (int d0 = 0; d0 < D; d0 += 128) {  // every lane runs the loop: the shuffles need the whole warp
    const int d = d0 + lane * 4;
    const bool mine = d < D;
    float4 num = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int s = 0; s < kPre; ++s) {  // `used` is the same in every lane: the break is warp-uniform
      if (s >= used) break;
      const float w = __shfl_sync(0xffffffffu, w0, s);
      const float4 a = d0 == 0 ? pre[s]
                       : mine  ? __ldcg(reinterpret_cast<const float4*>(acc + static_cast<int64_t>(s) * D + d))
                               : make_float4(0.f, 0.f, 0.f, 0.f);
      num.x += w * a.x;
      num.y += w * a.y;
      num.z += w * a.z;
      num.w += w * a.w;
    }
#pragma unroll 4
    for (int s = kPre; s < used; ++s) {
      const float w = __shfl_sync(0xffffffffu, s < 32 ? w0 : w1, s % 32);
      const float4 a = mine ? __ldcg(reinterpret_cast<const float4*>(acc + static_cast<int64_t>(s) * D + d))
                            : make_float4(0.f, 0.f, 0.f, 0.f);
      num.x += w * a.x;
      num.y += w * a.y;
      num.z += w * a.z;
      num.w += w * a.w;
    }
    if (!mine) continue;
    out[d] = Act<T>::from_float(num.x * inv);
    out[d + 1] = Act<T>::from_float(num.y * inv);
    out[d + 2] = Act<T>::from_float(num.z * inv);
    out[d + 3] = Act<T>::from_float(num.w * inv);
  }
}

// Grid: (token, split, kv_head * head_tiles). Shared memory: q [HEADS][D] f32 (pre-scaled), then a
// region used as scores [HEADS][kSubChunk] during the loop and as the cross-warp sum [4][HEADS][D] after it.
// Min CTAs per SM: 5 without GQA caps registers at 96 (no spills). A cap of 80 (6 CTAs) spilled
// 44-88 bytes once q and the own row were staged together, and measured slower on an H200 (7B batch 1:
// 3.749 vs 3.726 ms per step at context 128-256, 4.056 vs 3.958 at 1024-1152).
template <class T, int LANES, int HEADS>
__global__ void __launch_bounds__(kThreads, HEADS == 1 ? 5 : 3)
    decode_kernel(Params p, int splits, float* partials, unsigned* counters) {
  constexpr int kKeysPerWarp = 32 / LANES;     // positions one warp reads per load
  constexpr int kUnroll = LANES >= 8 ? 4 : 2;  // independent 16-byte loads per lane per step (K and V each)
  constexpr int kWarpStep = kKeysPerWarp * kUnroll;
  constexpr int kStep = kWarps * kWarpStep;  // positions the CTA covers per step
  // PDL (launch.cuh): letting dependents launch early lets the next GEMV's CTAs take the SMs this
  // small grid leaves idle and stream their weights while attention runs. Before griddepcontrol.wait
  // the CTA reads only what no kernel of this step writes: the step's metadata (positions, token_seq,
  // block tables, uploaded before the step's first kernel) and, in decode steps (new_k set), the cache
  // rows of earlier positions (the step's own row comes from new_k / new_v). So the dependent chain
  // position -> block table -> K/V runs while the producer (the QKV projection) finishes; q, new_k /
  // new_v, the workspace and the output are touched after the wait. Every CTA waits before it exits,
  // so the grid never completes ahead of its producer (PDL's ordering stays transitive).
  detail::allow_dependents();
  const int m = blockIdx.x;
  const int split = blockIdx.y;
  const int group = p.num_heads / p.num_kv_heads;
  const int head_tiles = (group + HEADS - 1) / HEADS;
  const int kv_head = blockIdx.z / head_tiles;
  const int h0 = kv_head * group + blockIdx.z % head_tiles * HEADS;
  const int nh = min(HEADS, (kv_head + 1) * group - h0);
  if (prefill_tile_owns_row(p, m)) {
    detail::wait_for_producer();
    return;
  }
  const int context = p.positions[m] + 1;
  const int chunk = decode_chunk(context, splits);
  const int begin = split * chunk;
  if (begin >= context) {  // past this token's context: not counted (`used` below excludes it)
    detail::wait_for_producer();
    return;
  }
  const int end = min(begin + chunk, context);
  const bool direct = chunk >= context;  // the whole context is this CTA's: write the output
  const int newest = p.new_k != nullptr && end == context ? context - 1 : -1;  // read from new_k / new_v

  const int D = p.head_dim;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  extern __shared__ __align__(16) float smem[];
  float* q_s = smem;                         // [8][D]
  float* score_s = smem + HEADS * D;  // [8][kSubChunk], later [kWarps][8][D]
  __shared__ float max_s[HEADS], sum_s[HEADS], alpha_s[HEADS];
  __shared__ int32_t blocks_s[kSubChunk];  // block-table entries of the round (block size >= 1)
  // Chunks of this token (for the merge at the end; kept in shared memory, not in a register across
  // the loop: the instance without GQA has no register to spare under its occupancy bound).
  __shared__ unsigned used_s;
  if (threadIdx.x == 0) used_s = static_cast<unsigned>((context + chunk - 1) / chunk);

  const int32_t* table = p.block_tables + p.token_seq[m] * p.max_blocks_per_seq;
  const uint4* k_cache = static_cast<const uint4*>(p.k_cache);
  const uint4* v_cache = static_cast<const uint4*>(p.v_cache);
  const int sub = lane % LANES;       // this lane's 8-element slice of a row
  const int key_slot = lane / LANES;  // which of the warp's positions this lane reads
  const bool active = sub < D / 8;

  // The first step's K and V loads go out before q and the table are staged: their latency overlaps it
  // (and, in decode steps, the producer's tail).
  int64_t rows[kUnroll];
  uint4 k_raw[kUnroll], v_raw[kUnroll];
  step_rows<kUnroll, kKeysPerWarp>(p, table, 0, kv_head, begin + warp * kWarpStep, min(begin + kSubChunk, end),
                                   newest, key_slot, sub, active, rows);
  const bool cache_ready = p.new_k != nullptr;  // else the producer (rope_kv_write) writes this step's rows
  if (!cache_ready) detail::wait_for_producer();
  load_step(k_cache, rows, nullptr, sub, k_raw);
  load_step(v_cache, rows, nullptr, sub, v_raw);
  if (cache_ready) detail::wait_for_producer();
  auto stage_table = [&](int c0, int c1) {
    const int b0 = c0 / p.block_size, n = (c1 - 1) / p.block_size - b0 + 1;
    for (int i = tid; i < n; i += kThreads) blocks_s[i] = table[b0 + i];
  };
  stage_table(begin, min(begin + kSubChunk, end));

  // Staging, one 16-byte vector per item: q's nh heads (rotated first in decode steps, as
  // rope_kv_write would, then scaled) into q_s, and, when this CTA's chunk ends at the token's own
  // position, its k (rotated) and v rows into fresh_s and the cache. A thread's loads go out together.
  const T* q = static_cast<const T*>(p.q) + m * p.q_ld + static_cast<int64_t>(h0) * D;
  __shared__ uint4 fresh_s[2][kMaxHeadDim / 8];
  {
    const int vecs = D / 8;
    const int q_items = nh * vecs;
    const int items = q_items + (newest >= 0 ? 2 * vecs : 0);
    const bool rotate_q = p.new_k != nullptr && p.rope_cos != nullptr;  // else rope_kv_write rotated q
    for (int i = tid; i < items; i += kThreads) {
      const bool is_q = i < q_items;
      const int j = is_q ? i : i - q_items;  // q: head j / vecs; own row: k for j < vecs, v after
      const bool is_v = !is_q && j >= vecs;
      const int sub = j % vecs;
      const int64_t col = static_cast<int64_t>(kv_head) * D;
      const T* row = is_q   ? q + (j / vecs) * D
                     : is_v ? static_cast<const T*>(p.new_v) + m * p.new_v_ld + col
                            : static_cast<const T*>(p.new_k) + m * p.new_k_ld + col;
      const bool rotate = is_q ? rotate_q : !is_v && p.rope_cos != nullptr;
      const int64_t slot = is_q ? -1 : p.slots[m];
      const RopeInputs in = load_rope_inputs<T>(p, row, sub, is_q ? context - 1 : newest, rotate);
      float x[8];
      rope_vec<T>(p, in, sub, rotate, x);
      if (is_q) {
        float* dst = q_s + (j / vecs) * D + sub * 8;
#pragma unroll
        for (int e = 0; e < 8; ++e) dst[e] = detail::round_to<T>(x[e]) * p.scale_log2;
      } else {
        const uint4 raw = rotate ? pack8<T>(x) : in.x;
        fresh_s[is_v][sub] = raw;
        if (slot >= 0 && slot < p.num_slots) {
          T* cache = static_cast<T*>(const_cast<void*>(is_v ? p.v_cache : p.k_cache));
          *reinterpret_cast<uint4*>(cache + (slot * p.num_kv_heads + kv_head) * D + sub * 8) = raw;
        }
      }
    }
  }
  if (tid < HEADS) {
    max_s[tid] = -FLT_MAX;  // finite: exp2(-FLT_MAX - x) is 0, never NaN
    sum_s[tid] = 0.f;
  }
  __syncthreads();
  if (newest >= 0) {  // the first step's loads left the own row out: patch it in
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (active && begin + warp * kWarpStep + u * kKeysPerWarp + key_slot == newest) {  // rows[u] was kNewRow
        k_raw[u] = fresh_s[0][sub];
        v_raw[u] = fresh_s[1][sub];
      }
    }
  }

  float acc[HEADS][8] = {};
  for (int c0 = begin; c0 < end; c0 += kSubChunk) {
    const int c1 = min(c0 + kSubChunk, end);
    const int first = c0 + warp * kWarpStep;
    const int origin = c0 / p.block_size;
    if (c0 != begin) {
      stage_table(c0, c1);  // the previous round ended with a barrier: blocks_s is free
      __syncthreads();
      step_rows<kUnroll, kKeysPerWarp>(p, blocks_s, origin, kv_head, first, c1, newest, key_slot, sub, active,
                                       rows);
      load_step(k_cache, rows, fresh_s[0], sub, k_raw);
      load_step(v_cache, rows, fresh_s[1], sub, v_raw);
    }
    // 1. scores s[g][pos] = q_g · k_pos (already scaled into the exp2 domain)
    for (int base = first; base < c1; base += kStep) {
      uint4 cur[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) cur[u] = k_raw[u];
      if (base + kStep < c1) {  // next step's loads in flight while this one is scored
        int64_t next[kUnroll];
        step_rows<kUnroll, kKeysPerWarp>(p, blocks_s, origin, kv_head, base + kStep, c1, newest, key_slot, sub,
                                         active, next);
        load_step(k_cache, next, fresh_s[0], sub, k_raw);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int pos = base + u * kKeysPerWarp + key_slot;
        float k[8];
        unpack8<T>(cur[u], k);
#pragma unroll
        for (int g = 0; g < HEADS; ++g) {
          if (g >= nh) break;
          float s = 0.f;
          if (active) {
            const float4* qv = reinterpret_cast<const float4*>(q_s + g * D + sub * 8);
            const float4 a = qv[0], b = qv[1];
            s = a.x * k[0] + a.y * k[1] + a.z * k[2] + a.w * k[3] + b.x * k[4] + b.y * k[5] + b.z * k[6] +
                b.w * k[7];
          }
#pragma unroll
          for (int o = LANES / 2; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
          if (sub == 0 && pos < c1) score_s[g * kSubChunk + pos - c0] = s;
        }
      }
    }
    __syncthreads();
    // 2. online softmax: one warp per head; scores become weights 2^(s - max)
    for (int g = warp; g < nh; g += kWarps) {
      float* s = score_s + g * kSubChunk;
      float mx = -FLT_MAX;
      for (int i = lane; i < c1 - c0; i += 32) mx = fmaxf(mx, s[i]);
      const float m_old = max_s[g];
      const float m_new = fmaxf(m_old, warp_max(mx));
      float sum = 0.f;
      for (int i = lane; i < c1 - c0; i += 32) {
        const float e = exp2f(s[i] - m_new);
        s[i] = e;
        sum += e;
      }
      sum = warp_sum(sum);
      if (lane == 0) {
        const float alpha = exp2f(m_old - m_new);
        alpha_s[g] = alpha;
        sum_s[g] = sum_s[g] * alpha + sum;
        max_s[g] = m_new;
      }
    }
    __syncthreads();
    // 3. acc_g = alpha_g · acc_g + Σ_pos w[g][pos] · v_pos
#pragma unroll
    for (int g = 0; g < HEADS; ++g) {
      const float alpha = g < nh ? alpha_s[g] : 0.f;
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[g][i] *= alpha;
    }
    for (int base = first; base < c1; base += kStep) {
      uint4 cur[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) cur[u] = v_raw[u];
      if (base + kStep < c1) {
        int64_t next[kUnroll];
        step_rows<kUnroll, kKeysPerWarp>(p, blocks_s, origin, kv_head, base + kStep, c1, newest, key_slot, sub,
                                         active, next);
        load_step(v_cache, next, fresh_s[1], sub, v_raw);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int pos = base + u * kKeysPerWarp + key_slot;
        if (pos >= c1 || !active) continue;
        float v[8];
        unpack8<T>(cur[u], v);
#pragma unroll
        for (int g = 0; g < HEADS; ++g) {
          if (g >= nh) break;
          const float w = score_s[g * kSubChunk + pos - c0];
#pragma unroll
          for (int i = 0; i < 8; ++i) acc[g][i] += w * v[i];
        }
      }
    }
    __syncthreads();  // score_s is rewritten by the next round
  }

  // Sum over the warp's positions (lanes with the same `sub`), then over warps through shared memory.
  float* red_s = score_s;  // [kWarps][8][D]
#pragma unroll
  for (int g = 0; g < HEADS; ++g) {
#pragma unroll
    for (int i = 0; i < 8; ++i) {
#pragma unroll
      for (int o = LANES; o < 32; o *= 2) acc[g][i] += __shfl_xor_sync(0xffffffffu, acc[g][i], o);
    }
  }
  if (key_slot == 0 && active) {
    for (int g = 0; g < nh; ++g) {
      float4* dst = reinterpret_cast<float4*>(red_s + (warp * HEADS + g) * D + sub * 8);
      dst[0] = make_float4(acc[g][0], acc[g][1], acc[g][2], acc[g][3]);
      dst[1] = make_float4(acc[g][4], acc[g][5], acc[g][6], acc[g][7]);
    }
  }
  __syncthreads();
  const int64_t rows_total = static_cast<int64_t>(p.num_tokens) * p.num_heads * splits;
  for (int i = tid; i < nh * D; i += kThreads) {
    const int g = i / D, d = i % D;
    float total = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) total += red_s[(w * HEADS + g) * D + d];
    const int64_t head = h0 + g;
    if (direct) {
      T* out = static_cast<T*>(p.out) + (static_cast<int64_t>(m) * p.num_heads + head) * D;
      out[d] = Act<T>::from_float(total / sum_s[g]);
    } else {
      const int64_t row = (static_cast<int64_t>(m) * p.num_heads + head) * splits + split;
      partials[row * D + d] = total;
      if (d == 0) {
        float* ml = partials + rows_total * D + row * 2;
        ml[0] = max_s[g];
        ml[1] = sum_s[g];
      }
    }
  }
  if (direct) return;  // CTA-uniform

  // Publish the partials, count this CTA in; the last of the token's `used` chunks merges them.
  __shared__ bool last_s;
  __threadfence();
  __syncthreads();
  const unsigned used = used_s;
  if (tid == 0) last_s = atomicInc(counters + m * gridDim.z + blockIdx.z, used - 1) == used - 1;
  __syncthreads();
  if (!last_s) return;
  __threadfence();  // the other CTAs' partials are read below (through L2: __ldcg)
  for (int g = warp; g < nh; g += kWarps) merge_head<T>(p, m, h0 + g, splits, static_cast<int>(used), partials);
}

using DecodeKernel = void (*)(Params, int, float*, unsigned*);

// The instance for (T, head_dim, GQA or not), its dynamic shared memory and the grid's z extent.
struct DecodeInstance {
  DecodeKernel kernel;
  size_t smem;
  int heads_per_cta;
};

template <class T, int HEADS>
DecodeInstance instance_heads(int head_dim) {
  int lanes = 1;
  while (lanes * 8 < head_dim) lanes *= 2;
  const DecodeKernel kernels[] = {decode_kernel<T, 1, HEADS>,  decode_kernel<T, 2, HEADS>,
                                  decode_kernel<T, 4, HEADS>,  decode_kernel<T, 8, HEADS>,
                                  decode_kernel<T, 16, HEADS>, decode_kernel<T, 32, HEADS>};
  const int index = lanes == 1 ? 0 : lanes == 2 ? 1 : lanes == 4 ? 2 : lanes == 8 ? 3 : lanes == 16 ? 4 : 5;
  const int region = max(HEADS * kSubChunk, kWarps * HEADS * head_dim);
  const size_t smem = (HEADS * head_dim + region) * sizeof(float);  // <= 40 KiB at D = 256
  return {kernels[index], smem, HEADS};
}

template <class T>
DecodeInstance instance(const Params& p) {
  return p.num_heads == p.num_kv_heads ? instance_heads<T, 1>(p.head_dim)
                                       : instance_heads<T, kMaxHeadsPerCta>(p.head_dim);
}

template <class T>
cudaError_t launch(const Params& p, int splits, void* workspace, cudaStream_t stream) {
  const DecodeInstance k = instance<T>(p);
  const int group = p.num_heads / p.num_kv_heads;
  const dim3 grid(p.num_tokens, splits, p.num_kv_heads * ((group + k.heads_per_cta - 1) / k.heads_per_cta));
  unsigned* counters = static_cast<unsigned*>(workspace);
  float* partials = workspace ? reinterpret_cast<float*>(static_cast<char*>(workspace) + kDecodeCounterBytes) : nullptr;
  return detail::launch_kernel(k.kernel, grid, dim3(kThreads), k.smem, stream, p, splits, partials, counters);
}

}  // namespace

int decode_ctas_per_sm(const Params& p, DType act) {
  // Cached per instance (the query costs microseconds of host time per call otherwise); one GPU model
  // per process is assumed, as the binary is built for one architecture.
  static std::atomic<int> cache[2][2][kMaxHeadDim / 8 + 1];
  std::atomic<int>& slot = cache[act == DType::F16][p.num_heads == p.num_kv_heads][p.head_dim / 8];
  int ctas = slot.load(std::memory_order_relaxed);
  if (ctas > 0) return ctas;
  const DecodeInstance k = act == DType::F16 ? instance<__half>(p) : instance<__nv_bfloat16>(p);
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&ctas, k.kernel, kThreads, k.smem) != cudaSuccess)
    return 4;  // the error resurfaces at launch; only the split count depends on this
  ctas = ctas > 0 ? ctas : 1;
  slot.store(ctas, std::memory_order_relaxed);
  return ctas;
}

cudaError_t launch_decode(const Params& p, DType act, int splits, void* workspace, cudaStream_t stream) {
  return act == DType::F16 ? launch<__half>(p, splits, workspace, stream)
                           : launch<__nv_bfloat16>(p, splits, workspace, stream);
}

}  // namespace kiln::cuda::attention
