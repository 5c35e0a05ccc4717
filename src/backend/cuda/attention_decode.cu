// Split-K paged attention ("flash-decoding", Dao et al. 2023; vLLM PagedAttention v2): for query
// rows with few siblings (decode tokens, short or mixed tiles) the context is cut into `splits`
// chunks; one CTA computes the partial softmax (max, sum, unnormalized output) of one
// (token, GQA group, chunk) and a second kernel merges the partials:
//   out = Σ_s 2^(m_s - m) acc_s / Σ_s 2^(m_s - m) l_s,   m = max_s m_s
// One CTA serves up to kHeadsPerCta query heads of one KV head, so each K/V row is read once for
// the whole group. Lanes read K/V in 16-byte vectors: a row of head_dim is covered by LANES lanes
// (head_dim / 8 rounded up to a power of two), the other lanes of the warp take other positions.
// Bytes: 2 · context · num_kv_heads · head_dim · sizeof(act) per token (the cache is read once);
// FLOPs: 4 · context · num_heads · head_dim. Memory-bound for GQA groups up to ~8.
#include <cfloat>

#include "backend/cuda/attention_common.cuh"

namespace kiln::cuda::attention {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kHeadsPerCta = 8;
constexpr int kSubChunk = 256;  // positions scored per round (the shared score buffer)

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Grid: (token, split, kv_head * head_tiles). Shared memory: q [8][D] f32 (pre-scaled), then a
// region used as scores [8][kSubChunk] during the loop and as the cross-warp sum [4][8][D] after it.
template <class T, int LANES>
__global__ void __launch_bounds__(kThreads) decode_kernel(Params p, int splits, int chunk, float* partials) {
  constexpr int kKeysPerWarp = 32 / LANES;     // positions one warp reads per step
  constexpr int kUnroll = LANES >= 8 ? 4 : 2;  // independent 16-byte loads in flight per lane
  constexpr int kStep = kWarps * kKeysPerWarp * kUnroll;
  const int m = blockIdx.x;
  const int split = blockIdx.y;
  const int group = p.num_heads / p.num_kv_heads;
  const int head_tiles = (group + kHeadsPerCta - 1) / kHeadsPerCta;
  const int kv_head = blockIdx.z / head_tiles;
  const int h0 = kv_head * group + blockIdx.z % head_tiles * kHeadsPerCta;
  const int nh = min(kHeadsPerCta, (kv_head + 1) * group - h0);
  if (prefill_tile_owns_row(p, m)) return;
  const int last = p.positions[m];
  const int begin = split * chunk;
  // The last split runs to the end even if max_position understated the context.
  const int end = split == splits - 1 ? last + 1 : min(begin + chunk, last + 1);
  if (begin >= end) return;  // beyond this token's context; the combine kernel skips it

  const int D = p.head_dim;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  extern __shared__ __align__(16) float smem[];
  float* q_s = smem;                         // [8][D]
  float* score_s = smem + kHeadsPerCta * D;  // [8][kSubChunk], later [kWarps][8][D]
  __shared__ float max_s[kHeadsPerCta], sum_s[kHeadsPerCta], alpha_s[kHeadsPerCta];

  const T* q = static_cast<const T*>(p.q) + m * p.q_ld + static_cast<int64_t>(h0) * D;
  for (int i = tid; i < nh * D; i += kThreads) q_s[i] = Act<T>::to_float(q[i]) * p.scale_log2;
  if (tid < kHeadsPerCta) {
    max_s[tid] = -FLT_MAX;  // finite: exp2(-FLT_MAX - x) is 0, never NaN
    sum_s[tid] = 0.f;
  }
  __syncthreads();

  const int32_t* table = p.block_tables + p.token_seq[m] * p.max_blocks_per_seq;
  const uint4* k_cache = static_cast<const uint4*>(p.k_cache);
  const uint4* v_cache = static_cast<const uint4*>(p.v_cache);
  const int vecs_per_row = D / 8;
  const int sub = lane % LANES;       // this lane's 8-element slice of a row
  const int key_slot = lane / LANES;  // which of the warp's positions this lane reads
  const bool active = sub < vecs_per_row;
  float acc[kHeadsPerCta][8] = {};

  for (int c0 = begin; c0 < end; c0 += kSubChunk) {
    const int c1 = min(c0 + kSubChunk, end);
    // 1. scores s[g][pos] = q_g · k_pos (already scaled into the exp2 domain)
    for (int base = c0 + warp * kKeysPerWarp * kUnroll; base < c1; base += kStep) {
      uint4 raw[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int pos = base + u * kKeysPerWarp + key_slot;
        raw[u] = make_uint4(0, 0, 0, 0);
        if (pos < c1 && active) raw[u] = k_cache[cache_row(p, table, pos, kv_head) * vecs_per_row + sub];
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int pos = base + u * kKeysPerWarp + key_slot;
        float k[8];
        unpack8<T>(raw[u], k);
#pragma unroll
        for (int g = 0; g < kHeadsPerCta; ++g) {
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
    for (int g = 0; g < kHeadsPerCta; ++g) {
      const float alpha = g < nh ? alpha_s[g] : 0.f;
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[g][i] *= alpha;
    }
    for (int base = c0 + warp * kKeysPerWarp * kUnroll; base < c1; base += kStep) {
      uint4 raw[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int pos = base + u * kKeysPerWarp + key_slot;
        raw[u] = make_uint4(0, 0, 0, 0);
        if (pos < c1 && active) raw[u] = v_cache[cache_row(p, table, pos, kv_head) * vecs_per_row + sub];
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int pos = base + u * kKeysPerWarp + key_slot;
        if (pos >= c1 || !active) continue;
        float v[8];
        unpack8<T>(raw[u], v);
#pragma unroll
        for (int g = 0; g < kHeadsPerCta; ++g) {
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
  for (int g = 0; g < kHeadsPerCta; ++g) {
#pragma unroll
    for (int i = 0; i < 8; ++i) {
#pragma unroll
      for (int o = LANES; o < 32; o *= 2) acc[g][i] += __shfl_xor_sync(0xffffffffu, acc[g][i], o);
    }
  }
  if (key_slot == 0 && active) {
    for (int g = 0; g < nh; ++g) {
      float4* dst = reinterpret_cast<float4*>(red_s + (warp * kHeadsPerCta + g) * D + sub * 8);
      dst[0] = make_float4(acc[g][0], acc[g][1], acc[g][2], acc[g][3]);
      dst[1] = make_float4(acc[g][4], acc[g][5], acc[g][6], acc[g][7]);
    }
  }
  __syncthreads();
  for (int i = tid; i < nh * D; i += kThreads) {
    const int g = i / D, d = i % D;
    float total = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) total += red_s[(w * kHeadsPerCta + g) * D + d];
    const int64_t head = h0 + g;
    if (splits == 1) {
      T* out = static_cast<T*>(p.out) + (static_cast<int64_t>(m) * p.num_heads + head) * D;
      out[d] = Act<T>::from_float(total / sum_s[g]);
    } else {
      float* part = partials + ((static_cast<int64_t>(m) * p.num_heads + head) * splits + split) * (D + 2);
      part[d] = total;
      if (d == 0) {
        part[D] = max_s[g];
        part[D + 1] = sum_s[g];
      }
    }
  }
}

// Grid: (token, head). Merges the partials of the splits that cover the token's context.
template <class T>
__global__ void __launch_bounds__(kThreads)
    combine_kernel(Params p, int splits, int chunk, const float* partials) {
  const int m = blockIdx.x, head = blockIdx.y;
  if (prefill_tile_owns_row(p, m)) return;
  const int D = p.head_dim;
  const int used = min(splits, p.positions[m] / chunk + 1);
  const float* part = partials + (static_cast<int64_t>(m) * p.num_heads + head) * splits * (D + 2);
  float m_all = -FLT_MAX;
  for (int s = 0; s < used; ++s) m_all = fmaxf(m_all, part[s * (D + 2) + D]);
  float denom = 0.f;
  for (int s = 0; s < used; ++s) denom += exp2f(part[s * (D + 2) + D] - m_all) * part[s * (D + 2) + D + 1];
  T* out = static_cast<T*>(p.out) + (static_cast<int64_t>(m) * p.num_heads + head) * D;
  for (int d = threadIdx.x; d < D; d += kThreads) {
    float num = 0.f;
    for (int s = 0; s < used; ++s) num += exp2f(part[s * (D + 2) + D] - m_all) * part[s * (D + 2) + d];
    out[d] = Act<T>::from_float(num / denom);
  }
}

template <class T>
cudaError_t launch(const Params& p, int splits, int chunk, float* partials, cudaStream_t stream) {
  const int group = p.num_heads / p.num_kv_heads;
  const dim3 grid(p.num_tokens, splits, p.num_kv_heads * ((group + kHeadsPerCta - 1) / kHeadsPerCta));
  const int D = p.head_dim;
  const int region = max(kHeadsPerCta * kSubChunk, kWarps * kHeadsPerCta * D);
  const size_t smem = (kHeadsPerCta * D + region) * sizeof(float);  // <= 40 KiB at D = 256
  int lanes = 1;
  while (lanes * 8 < D) lanes *= 2;
  switch (lanes) {
    case 1:
      decode_kernel<T, 1><<<grid, kThreads, smem, stream>>>(p, splits, chunk, partials);
      break;
    case 2:
      decode_kernel<T, 2><<<grid, kThreads, smem, stream>>>(p, splits, chunk, partials);
      break;
    case 4:
      decode_kernel<T, 4><<<grid, kThreads, smem, stream>>>(p, splits, chunk, partials);
      break;
    case 8:
      decode_kernel<T, 8><<<grid, kThreads, smem, stream>>>(p, splits, chunk, partials);
      break;
    case 16:
      decode_kernel<T, 16><<<grid, kThreads, smem, stream>>>(p, splits, chunk, partials);
      break;
    default:
      decode_kernel<T, 32><<<grid, kThreads, smem, stream>>>(p, splits, chunk, partials);
      break;
  }
  if (splits > 1) {
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    combine_kernel<T><<<dim3(p.num_tokens, p.num_heads), kThreads, 0, stream>>>(p, splits, chunk, partials);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_decode(const Params& p, DType act, int splits, int chunk, float* partials,
                          cudaStream_t stream) {
  return act == DType::F16 ? launch<__half>(p, splits, chunk, partials, stream)
                           : launch<__nv_bfloat16>(p, splits, chunk, partials, stream);
}

}  // namespace kiln::cuda::attention
