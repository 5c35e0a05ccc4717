// Tiled causal attention for prefill chunks (FlashAttention-2, Dao 2023): one CTA takes a tile of 64
// query rows of one sequence and one query head, walks the sequence's keys in blocks of 64 through
// the block table and keeps an online softmax per row:
//   S = Q Kᵀ (tensor cores, f32 accumulate) → mask p > position → m' = max(m, rowmax S),
//   P = 2^(S - m'), l' = 2^(m - m') l + rowsum P, O' = 2^(m - m') O + P V (tensor cores)
// Each of the 4 warps owns 16 query rows. Operands stay in registers in mma.sync.m16n8k16's layout:
// Q's A fragments are loaded once (ldmatrix), S and O are accumulators (a thread holds rows
// g = lane / 4 and g + 8, columns 2 (lane % 4) + {0, 1} of each 8-wide tile), P is re-packed from S's
// accumulators as the A operand of P V (no shared-memory round trip), K and V come through ldmatrix
// (V transposed), and the K/V tiles of the next block load with cp.async while this one computes
// (two stages, 85 KiB of shared memory at head_dim 128: two CTAs per SM).
// FLOPs: 4 · head_dim · Σ_rows (position + 1) per head; the K/V tile of a block is read once per
// (query tile, head) — from L2 for the other tiles and heads of a GQA group.
// H100, bench/cuda_attention_bench (one 7B layer, f16): 512 tokens 50.7 us (42.5 TFLOP/s), 2048 tokens
// 323 us (106 TFLOP/s), 2.0-2.25x the wmma kernel with O in shared memory it replaced.
#include <cfloat>

#include "backend/cuda/attention_common.cuh"

namespace kiln::cuda::attention {
namespace {

constexpr int kThreads = 128;
constexpr int kRows = kPrefillTileRows;  // 64 query rows, 16 per warp
constexpr int kKeys = 64;                // keys per block

namespace mma {

template <class T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
// 16 bytes global -> shared, zero-filled when !valid (src must still be a valid address).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_addr(dst)), "l"(src),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N)); }

template <class T>
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma16816<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                        uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <class T, int D>
struct Layout {
  static constexpr int kLd = D + 8;  // padded rows (16 bytes): ldmatrix's 8 rows hit 8 bank groups
  static constexpr size_t tile = sizeof(T) * kKeys * kLd;
  static constexpr size_t q = 0;                  // [kRows][kLd]
  static constexpr size_t kv = sizeof(T) * kRows * kLd;  // stage s: K at kv + 2 s tile, V after it
  static constexpr size_t bytes = kv + 4 * tile;  // 85 KiB at D = 128
};

template <class T, int D>
__global__ void __launch_bounds__(kThreads) prefill_mma_kernel(Params p) {
  using L = Layout<T, D>;
  constexpr int kVecs = D / 8;
  constexpr int kNt = kKeys / 8;  // 8-key tiles of S
  constexpr int kDt = D / 8;      // 8-wide tiles of O
  const int head = blockIdx.x;
  const int tile = gridDim.y - 1 - blockIdx.y;  // longest (last) tiles first
  const int m0 = tile * kRows;
  if (!prefill_tile_owns_row(p, m0)) return;
  const int rows = min(kRows, p.num_tokens - m0);
  const int kv_head = head / (p.num_heads / p.num_kv_heads);
  const int32_t* table = p.block_tables + p.token_seq[m0] * p.max_blocks_per_seq;

  extern __shared__ __align__(128) unsigned char smem[];
  T* q_s = reinterpret_cast<T*>(smem + L::q);
  const auto k_stage = [&](int s) { return reinterpret_cast<T*>(smem + L::kv + 2 * s * L::tile); };
  const auto v_stage = [&](int s) { return reinterpret_cast<T*>(smem + L::kv + (2 * s + 1) * L::tile); };
  __shared__ int max_pos_s;

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int g = lane / 4, t = lane % 4;
  if (warp == 0) {
    int mx = max(p.positions[m0 + min(lane, rows - 1)], p.positions[m0 + min(lane + 32, rows - 1)]);
    for (int o = 16; o > 0; o /= 2) mx = max(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if (lane == 0) max_pos_s = mx;
  }
  // Positions of this thread's two rows (padding rows copy a real one; their output is not stored).
  const int row_a = warp * 16 + g, row_b = row_a + 8;
  const int pos_a = p.positions[m0 + min(row_a, rows - 1)];
  const int pos_b = p.positions[m0 + min(row_b, rows - 1)];

  const uint4* q = static_cast<const uint4*>(p.q);
  for (int i = tid; i < kRows * kVecs; i += kThreads) {
    const int r = i / kVecs, c = i % kVecs;
    cp_async16(q_s + r * L::kLd + c * 8, q + ((m0 + min(r, rows - 1)) * p.q_ld + head * D) / 8 + c, r < rows);
  }
  const uint4* k_cache = static_cast<const uint4*>(p.k_cache);
  const uint4* v_cache = static_cast<const uint4*>(p.v_cache);
  __syncthreads();  // max_pos_s
  const int max_pos = max_pos_s;
  const auto load_block = [&](int key0, int s) {
    T* k_s = k_stage(s);
    T* v_s = v_stage(s);
    for (int i = tid; i < kKeys * kVecs; i += kThreads) {
      const int j = i / kVecs, c = i % kVecs;
      const bool valid = key0 + j <= max_pos;  // zeros past the end: 0 · V must not be NaN
      const int64_t r = valid ? cache_row(p, table, key0 + j, kv_head) * kVecs + c : 0;
      cp_async16(k_s + j * L::kLd + c * 8, k_cache + r, valid);
      cp_async16(v_s + j * L::kLd + c * 8, v_cache + r, valid);
    }
    cp_async_commit();  // the first group also holds the Q tile
  };
  load_block(0, 0);

  float o[kDt][4];
#pragma unroll
  for (int j = 0; j < kDt; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
  float m_a = -FLT_MAX, m_b = -FLT_MAX, l_a = 0.f, l_b = 0.f;
  uint32_t qf[D / 16][4];

  const int num_blocks = max_pos / kKeys + 1;
  for (int b = 0; b < num_blocks; ++b) {
    const int key0 = b * kKeys, s = b % 2;
    if (b + 1 < num_blocks) {
      load_block(key0 + kKeys, 1 - s);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (b == 0) {
      // A fragments of this warp's 16 Q rows: matrices (rows 0-7 | 8-15) x (cols lo | hi).
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk)
        ldmatrix_x4(qf[kk], q_s + (warp * 16 + (lane % 8) + 8 * ((lane / 8) % 2)) * L::kLd + kk * 16 + 8 * (lane / 16));
    }
    const T* k_s = k_stage(s);
    const T* v_s = v_stage(s);

    // S = Q Kᵀ: B fragments from K rows (keys) as columns; one x4 = two 8-key tiles x (lo | hi) of k.
    float sc[kNt][4];
#pragma unroll
    for (int j = 0; j < kNt; ++j) sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int j = 0; j < kNt; j += 2) {
        uint32_t kb[4];
        ldmatrix_x4(kb, k_s + (j * 8 + (lane % 8) + 8 * (lane / 16)) * L::kLd + kk * 16 + 8 * ((lane / 8) % 2));
        mma16816<T>(sc[j], qf[kk], kb[0], kb[1]);
        mma16816<T>(sc[j + 1], qf[kk], kb[2], kb[3]);
      }
    }

    // Online softmax of rows a (c0, c1) and b (c2, c3); a row's 64 keys are spread over its 4 lanes.
    float mx_a = -INFINITY, mx_b = -INFINITY;
#pragma unroll
    for (int j = 0; j < kNt; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int key = key0 + j * 8 + 2 * t + e;
        sc[j][e] = key <= pos_a ? sc[j][e] * p.scale_log2 : -INFINITY;
        sc[j][2 + e] = key <= pos_b ? sc[j][2 + e] * p.scale_log2 : -INFINITY;
        mx_a = fmaxf(mx_a, sc[j][e]);
        mx_b = fmaxf(mx_b, sc[j][2 + e]);
      }
    }
#pragma unroll
    for (int o2 = 1; o2 <= 2; o2 *= 2) {
      mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, o2));
      mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, o2));
    }
    const float mn_a = fmaxf(m_a, mx_a), mn_b = fmaxf(m_b, mx_b);
    const float alpha_a = exp2f(m_a - mn_a), alpha_b = exp2f(m_b - mn_b);
    m_a = mn_a;
    m_b = mn_b;
    float sum_a = 0.f, sum_b = 0.f;
    uint32_t pf[kKeys / 16][4];  // P as A fragments: S tiles 2 kk (cols lo) and 2 kk + 1 (cols hi)
#pragma unroll
    for (int j = 0; j < kNt; ++j) {
      const float e0 = exp2f(sc[j][0] - mn_a), e1 = exp2f(sc[j][1] - mn_a);
      const float e2 = exp2f(sc[j][2] - mn_b), e3 = exp2f(sc[j][3] - mn_b);
      sum_a += e0 + e1;
      sum_b += e2 + e3;
      pf[j / 2][(j % 2) * 2] = pack2<T>(e0, e1);
      pf[j / 2][(j % 2) * 2 + 1] = pack2<T>(e2, e3);
    }
#pragma unroll
    for (int o2 = 1; o2 <= 2; o2 *= 2) {
      sum_a += __shfl_xor_sync(0xffffffffu, sum_a, o2);
      sum_b += __shfl_xor_sync(0xffffffffu, sum_b, o2);
    }
    l_a = l_a * alpha_a + sum_a;
    l_b = l_b * alpha_b + sum_b;
#pragma unroll
    for (int j = 0; j < kDt; ++j) {
      o[j][0] *= alpha_a;
      o[j][1] *= alpha_a;
      o[j][2] *= alpha_b;
      o[j][3] *= alpha_b;
    }

    // O += P V: B fragments from V rows (keys) transposed; one x4 = (keys lo | hi) x two 8-wide d tiles.
#pragma unroll
    for (int kk = 0; kk < kKeys / 16; ++kk) {
#pragma unroll
      for (int j = 0; j < kDt; j += 2) {
        uint32_t vb[4];
        ldmatrix_x4_trans(vb, v_s + (kk * 16 + (lane % 8) + 8 * ((lane / 8) % 2)) * L::kLd + j * 8 + 8 * (lane / 16));
        mma16816<T>(o[j], pf[kk], vb[0], vb[1]);
        mma16816<T>(o[j + 1], pf[kk], vb[2], vb[3]);
      }
    }
    __syncthreads();  // this stage is refilled by the next iteration's load
  }

  // Normalize and store: this thread's 2 columns of each 8-wide tile for rows a and b.
  const float inv_a = 1.f / l_a, inv_b = 1.f / l_b;
  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int j = 0; j < kDt; ++j) {
    const int col = head * D + j * 8 + 2 * t;
    if (row_a < rows)
      *reinterpret_cast<uint32_t*>(out + static_cast<int64_t>(m0 + row_a) * p.num_heads * D + col) =
          pack2<T>(o[j][0] * inv_a, o[j][1] * inv_a);
    if (row_b < rows)
      *reinterpret_cast<uint32_t*>(out + static_cast<int64_t>(m0 + row_b) * p.num_heads * D + col) =
          pack2<T>(o[j][2] * inv_b, o[j][3] * inv_b);
  }
}

}  // namespace mma

template <class T, int D>
cudaError_t launch(const Params& p, cudaStream_t stream) {
  constexpr size_t smem = mma::Layout<T, D>::bytes;
  auto* kernel = mma::prefill_mma_kernel<T, D>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  const dim3 grid(p.num_heads, (p.num_tokens + kRows - 1) / kRows);
  kernel<<<grid, kThreads, smem, stream>>>(p);
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
