// Device helpers shared by the CUDA kernels in this folder: activation-dtype traits (f16/bf16 <->
// f32), 16-byte vector conversions, warp/block reductions and the dtype dispatch of the launchers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "common/dtype.h"

namespace kiln::cuda::detail {

// Two packed activations (one 32-bit word) <-> float2, and scalar conversions (round to nearest even).
template <class T>
struct Act;

template <>
struct Act<__half> {
  static __device__ __forceinline__ float2 to_float2(uint32_t bits) {
    __half2 h;
    static_assert(sizeof(h) == 4);
    memcpy(&h, &bits, 4);
    return __half22float2(h);
  }
  static __device__ __forceinline__ uint32_t from_float2(float a, float b) {
    const __half2 h = __floats2half2_rn(a, b);
    uint32_t bits;
    memcpy(&bits, &h, 4);
    return bits;
  }
  static __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half from_float(float v) { return __float2half_rn(v); }
};

template <>
struct Act<__nv_bfloat16> {
  // bf16 is the top half of an f32: widening is a shift, cheaper than a conversion instruction.
  static __device__ __forceinline__ float2 to_float2(uint32_t bits) {
    return make_float2(__uint_as_float(bits << 16), __uint_as_float(bits & 0xffff0000u));
  }
  static __device__ __forceinline__ uint32_t from_float2(float a, float b) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    uint32_t bits;
    memcpy(&bits, &h, 4);
    return bits;
  }
  static __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
};

// 8 activations in one 16-byte vector <-> 8 floats.
template <class T>
__device__ __forceinline__ void unpack8(const uint4& v, float (&f)[8]) {
  const float2 a = Act<T>::to_float2(v.x), b = Act<T>::to_float2(v.y);
  const float2 c = Act<T>::to_float2(v.z), d = Act<T>::to_float2(v.w);
  f[0] = a.x, f[1] = a.y, f[2] = b.x, f[3] = b.y, f[4] = c.x, f[5] = c.y, f[6] = d.x, f[7] = d.y;
}
template <class T>
__device__ __forceinline__ uint4 pack8(const float (&f)[8]) {
  return make_uint4(Act<T>::from_float2(f[0], f[1]), Act<T>::from_float2(f[2], f[3]),
                    Act<T>::from_float2(f[4], f[5]), Act<T>::from_float2(f[6], f[7]));
}

// Rounds f32 to the activation dtype and back: models HF's intermediate `.to(dtype)`.
template <class T>
__device__ __forceinline__ float round_to(float v) {
  return Act<T>::to_float(Act<T>::from_float(v));
}

// SwiGLU of one element in f32: silu(g) * u with silu(g) = g / (1 + exp(-g)) (HF ACT2FN["silu"],
// LlamaMLP: down(silu(gate) * up)). Shared by the swiglu kernel and the GEMV that applies it to its
// input, so that the two give the same bits.
__device__ __forceinline__ float silu_mul(float g, float u) { return g / (1.0f + __expf(-g)) * u; }

// RoPE: rotates the pair (a, b) by the angle whose cosine and sine are c and s (HF
// apply_rotary_pos_emb: a' = a c - b s, b' = b c + a s). Products and sums are rounded separately
// (no FMA contraction), so every kernel that rotates (rope, rope_kv_write, the decode attention that
// rotates its own q and the new k) gets the same bits whatever the compiler fuses around it.
__device__ __forceinline__ void rope_rotate(float& a, float& b, float c, float s) {
  const float a0 = a, b0 = b;
  a = __fsub_rn(__fmul_rn(a0, c), __fmul_rn(b0, s));
  b = __fadd_rn(__fmul_rn(b0, c), __fmul_rn(a0, s));
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// Must be reached by all threads of the block.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float partial[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  v = warp_sum(v);
  __syncthreads();  // partial[] may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int warps = blockDim.x / 32;
  v = lane < warps ? partial[lane] : 0.0f;
  return warp_sum(v);
}

// V consecutive activations <-> V floats: one 16-byte access when V == 8 (caller guarantees the
// alignment), scalar accesses when V == 1.
template <class T, int V>
__device__ __forceinline__ void load_vec(const T* p, float (&f)[V]) {
  if constexpr (V == 8) {
    unpack8<T>(*reinterpret_cast<const uint4*>(p), f);
  } else {
#pragma unroll
    for (int v = 0; v < V; ++v) f[v] = Act<T>::to_float(p[v]);
  }
}
template <class T, int V>
__device__ __forceinline__ void store_vec(T* p, const float (&f)[V]) {
  if constexpr (V == 8) {
    *reinterpret_cast<uint4*>(p) = pack8<T>(f);
  } else {
#pragma unroll
    for (int v = 0; v < V; ++v) p[v] = Act<T>::from_float(f[v]);
  }
}

inline bool is_aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace kiln::cuda::detail

// Calls BODY with `using T = __half` or `__nv_bfloat16` for act (F16 / BF16).
#define KILN_DISPATCH_ACT(act, ...)    \
  [&] {                                \
    if ((act) == ::kiln::DType::F16) { \
      using T = __half;                \
      __VA_ARGS__;                     \
    } else {                           \
      using T = __nv_bfloat16;         \
      __VA_ARGS__;                     \
    }                                  \
  }()
