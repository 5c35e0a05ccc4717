// Tiled causal attention for prefill chunks (FlashAttention-2, Dao 2023): one CTA takes a tile of 64
// query rows of one sequence and one query head, walks the sequence's keys in blocks of 64 through
// the block table and keeps an online softmax per row:
//   S = Q Kᵀ (tensor cores, f32 accumulate) → mask p > position → m' = max(m, rowmax S),
//   P = 2^(S - m'), l' = 2^(m - m') l + rowsum P, O' = 2^(m - m') O + P V (tensor cores)
// Each warp owns 16 query rows. O stays in shared memory in f32 (wmma accumulators have no
// documented element layout, so the per-row rescale goes through shared memory).
// FLOPs: 4 · head_dim · Σ_rows (position + 1) per head; the K/V tile of a block is read once per
// (query tile, head) — from L2 for the other tiles and heads of a GQA group.
#include <mma.h>

#include <cfloat>

#include "backend/cuda/attention_common.cuh"

namespace kiln::cuda::attention {
namespace {

using namespace nvcuda;

constexpr int kThreads = 128;
constexpr int kRows = kPrefillTileRows;  // 64 query rows, 16 per warp
constexpr int kKeys = 64;                // keys per block

template <class T, int D>
struct Smem {
  static constexpr int kLdT = D + 8;  // activation tiles, padded by 16 bytes against bank conflicts
  static constexpr int kLdS = kKeys + 4;
  static constexpr int kLdO = D + 4;
  static constexpr int kLdP = kKeys + 8;
  // Offsets in bytes; every wmma pointer stays 32-byte aligned (16-row steps of padded rows).
  static constexpr size_t q = 0;
  static constexpr size_t k = q + sizeof(T) * kRows * kLdT;
  static constexpr size_t v = k + sizeof(T) * kKeys * kLdT;
  static constexpr size_t s = v + sizeof(T) * kKeys * kLdT;
  static constexpr size_t o = s + sizeof(float) * kRows * kLdS;
  static constexpr size_t p = o + sizeof(float) * kRows * kLdO;
  static constexpr size_t bytes = p + sizeof(T) * kRows * kLdP;  // 110 KiB at D = 128
};

template <class T, int D>
__global__ void __launch_bounds__(kThreads) prefill_kernel(Params p) {
  using L = Smem<T, D>;
  constexpr int kVecs = D / 8;  // 16-byte vectors per row
  const int head = blockIdx.x;
  const int tile = gridDim.y - 1 - blockIdx.y;  // longest (last) tiles first
  const int m0 = tile * kRows;
  if (!prefill_tile_owns_row(p, m0)) return;
  const int rows = min(kRows, p.num_tokens - m0);
  const int kv_head = head / (p.num_heads / p.num_kv_heads);
  const int32_t* table = p.block_tables + p.token_seq[m0] * p.max_blocks_per_seq;

  extern __shared__ __align__(128) unsigned char smem[];
  T* q_s = reinterpret_cast<T*>(smem + L::q);
  T* k_s = reinterpret_cast<T*>(smem + L::k);
  T* v_s = reinterpret_cast<T*>(smem + L::v);
  float* s_s = reinterpret_cast<float*>(smem + L::s);
  float* o_s = reinterpret_cast<float*>(smem + L::o);
  T* p_s = reinterpret_cast<T*>(smem + L::p);
  __shared__ int pos_s[kRows];
  __shared__ float alpha_s[kRows];
  __shared__ int max_pos_s;

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  if (tid < kRows) pos_s[tid] = p.positions[m0 + min(tid, rows - 1)];  // padding rows copy a real one
  if (warp == 0) {
    int mx = max(p.positions[m0 + min(lane, rows - 1)], p.positions[m0 + min(lane + 32, rows - 1)]);
    for (int o = 16; o > 0; o /= 2) mx = max(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if (lane == 0) max_pos_s = mx;
  }
  const uint4* q = static_cast<const uint4*>(p.q);
  for (int i = tid; i < kRows * kVecs; i += kThreads) {
    const int r = i / kVecs, c = i % kVecs;
    uint4 val = make_uint4(0, 0, 0, 0);
    if (r < rows) val = q[((m0 + r) * p.q_ld + head * D) / 8 + c];
    *reinterpret_cast<uint4*>(q_s + r * L::kLdT + c * 8) = val;
  }
  for (int i = tid; i < kRows * L::kLdO; i += kThreads) o_s[i] = 0.f;
  __syncthreads();

  const uint4* k_cache = static_cast<const uint4*>(p.k_cache);
  const uint4* v_cache = static_cast<const uint4*>(p.v_cache);
  const int max_pos = max_pos_s;
  const int row = warp * 16 + lane / 2;  // softmax: two lanes per row, 32 keys each
  const int half = lane % 2;
  const int row_pos = pos_s[row];
  float m_i = -FLT_MAX, l_i = 0.f;

  for (int key0 = 0; key0 <= max_pos; key0 += kKeys) {
    for (int i = tid; i < kKeys * kVecs; i += kThreads) {
      const int j = i / kVecs, c = i % kVecs;
      uint4 kv = make_uint4(0, 0, 0, 0), vv = kv;  // zeros past the end: 0 · V must not be NaN
      if (key0 + j <= max_pos) {
        const int64_t r = cache_row(p, table, key0 + j, kv_head) * kVecs + c;
        kv = k_cache[r];
        vv = v_cache[r];
      }
      *reinterpret_cast<uint4*>(k_s + j * L::kLdT + c * 8) = kv;
      *reinterpret_cast<uint4*>(v_s + j * L::kLdT + c * 8) = vv;
    }
    __syncthreads();

    // S[16 rows of this warp, 64 keys] = Q Kᵀ
    {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[kKeys / 16];
#pragma unroll
      for (int n = 0; n < kKeys / 16; ++n) wmma::fill_fragment(acc[n], 0.f);
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
        wmma::load_matrix_sync(a, q_s + warp * 16 * L::kLdT + kk * 16, L::kLdT);
#pragma unroll
        for (int n = 0; n < kKeys / 16; ++n) {
          wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b;  // Kᵀ: K rows are columns
          wmma::load_matrix_sync(b, k_s + n * 16 * L::kLdT + kk * 16, L::kLdT);
          wmma::mma_sync(acc[n], a, b, acc[n]);
        }
      }
#pragma unroll
      for (int n = 0; n < kKeys / 16; ++n)
        wmma::store_matrix_sync(s_s + warp * 16 * L::kLdS + n * 16, acc[n], L::kLdS, wmma::mem_row_major);
    }
    __syncwarp();

    // Online softmax of this warp's rows.
    {
      float s[32];
      float mx = -FLT_MAX;
#pragma unroll
      for (int j = 0; j < 32; ++j) {
        const int key = key0 + half * 32 + j;
        s[j] = key <= row_pos ? s_s[row * L::kLdS + half * 32 + j] * p.scale_log2 : -INFINITY;
        mx = fmaxf(mx, s[j]);
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      const float m_new = fmaxf(m_i, mx);
      const float alpha = exp2f(m_i - m_new);
      float sum = 0.f;
#pragma unroll
      for (int j = 0; j < 32; ++j) {
        const float e = exp2f(s[j] - m_new);
        sum += e;
        p_s[row * L::kLdP + half * 32 + j] = Act<T>::from_float(e);
      }
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      l_i = l_i * alpha + sum;
      m_i = m_new;
      if (half == 0) alpha_s[row] = alpha;
    }
    __syncwarp();
    for (int i = lane; i < 16 * D; i += 32) {
      const int r = warp * 16 + i / D;
      o_s[r * L::kLdO + i % D] *= alpha_s[r];
    }
    __syncwarp();

    // O[16 rows, D] += P V
#pragma unroll
    for (int n = 0; n < D / 16; ++n) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> o;
      float* o_ptr = o_s + warp * 16 * L::kLdO + n * 16;
      wmma::load_matrix_sync(o, o_ptr, L::kLdO, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < kKeys / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b;
        wmma::load_matrix_sync(a, p_s + warp * 16 * L::kLdP + kk * 16, L::kLdP);
        wmma::load_matrix_sync(b, v_s + kk * 16 * L::kLdT + n * 16, L::kLdT);
        wmma::mma_sync(o, a, b, o);
      }
      wmma::store_matrix_sync(o_ptr, o, L::kLdO, wmma::mem_row_major);
    }
    __syncthreads();  // k_s / v_s are overwritten next block
  }

  if (half == 0) alpha_s[row] = 1.f / l_i;
  __syncwarp();
  uint4* out = static_cast<uint4*>(p.out);
  for (int i = lane; i < 16 * kVecs; i += 32) {
    const int r = warp * 16 + i / kVecs, c = i % kVecs;
    if (r >= rows) continue;
    float f[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) f[e] = o_s[r * L::kLdO + c * 8 + e] * alpha_s[r];
    out[((static_cast<int64_t>(m0 + r) * p.num_heads + head) * D) / 8 + c] = pack8<T>(f);
  }
}

template <class T, int D>
cudaError_t launch(const Params& p, cudaStream_t stream) {
  constexpr size_t smem = Smem<T, D>::bytes;
  cudaError_t err =
      cudaFuncSetAttribute(prefill_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  const dim3 grid(p.num_heads, (p.num_tokens + kRows - 1) / kRows);
  prefill_kernel<T, D><<<grid, kThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

template <class T>
cudaError_t launch_for_dtype(const Params& p, cudaStream_t stream) {
  return p.head_dim == 64 ? launch<T, 64>(p, stream) : launch<T, 128>(p, stream);
}

}  // namespace

cudaError_t launch_prefill(const Params& p, DType act, cudaStream_t stream) {
  return act == DType::F16 ? launch_for_dtype<__half>(p, stream) : launch_for_dtype<__nv_bfloat16>(p, stream);
}

}  // namespace kiln::cuda::attention
