// Fused RoPE + paged KV-cache write for one attention layer: rope(q) + rope(k) + kv_cache_write in one
// launch (three in the unfused graph). Same math as rope.cu (f32, one rounding per output) and the
// same slot rule as kv_cache.cu (negative or out-of-range slots are not written), so the result is
// the composition's, bit for bit.
//
// One thread owns 4 consecutive rotation pairs (j0 .. j0 + 3) of one head of one token:
//   HF pairing (j, j + half): elements [j0, j0 + 4) and [half + j0, half + j0 + 4), two 8-byte words;
//   llama2.c pairing (2j, 2j + 1): elements [2 j0, 2 j0 + 8), one 16-byte word.
// Heads 0 .. num_heads - 1 are q heads (rotated in place); the next num_kv_heads are k heads (rotated
// in place and stored to the cache), and the thread of k head h also copies the same columns of v
// head h to the cache. Bytes (M = 1, Llama-2-7B): q + k read and written, v read, k + v written:
// 7 * 8 KB; a latency-bound kernel (one launch instead of three is the point).
#include <algorithm>
#include <string>

#include "backend/cuda/act_traits.cuh"
#include "backend/cuda/kernels.h"
#include "backend/cuda/launch.cuh"

namespace kiln::cuda {
namespace {

using detail::Act;

constexpr int kThreads = 256;
constexpr int kPairs = 4;  // rotation pairs per thread

// 4 activations (8 bytes) <-> 4 floats.
template <class T>
__device__ __forceinline__ void load4(const T* p, float (&f)[4]) {
  const uint2 word = *reinterpret_cast<const uint2*>(p);
  const float2 a = Act<T>::to_float2(word.x), b = Act<T>::to_float2(word.y);
  f[0] = a.x, f[1] = a.y, f[2] = b.x, f[3] = b.y;
}
template <class T>
__device__ __forceinline__ void store4(T* p, const float (&f)[4]) {
  *reinterpret_cast<uint2*>(p) = make_uint2(Act<T>::from_float2(f[0], f[1]), Act<T>::from_float2(f[2], f[3]));
}

using detail::rope_rotate;

// q: [M, num_heads * head_dim] at stride q_ld; k, v: [M, num_kv_heads * head_dim] at strides k_ld,
// v_ld; cos/sin: [max_position, half]; positions, slots: [M]; caches: [num_slots, num_kv_heads * head_dim].
template <class T, bool kInterleaved>
__global__ void __launch_bounds__(kThreads)
    rope_kv_write_kernel(T* __restrict__ q, int64_t q_ld, int num_heads, T* __restrict__ k, int64_t k_ld,
                         const T* __restrict__ v, int64_t v_ld, int num_kv_heads, int half, int64_t M,
                         const int32_t* __restrict__ positions, const float* __restrict__ cos,
                         const float* __restrict__ sin, const int32_t* __restrict__ slot_mapping,
                         int64_t num_slots, T* __restrict__ k_cache, T* __restrict__ v_cache) {
  detail::allow_dependents();
  detail::wait_for_producer();  // q, k, v, positions and slots come from earlier work (launch.cuh)
  const int chunks = half / kPairs;  // per head
  const int64_t units_per_row = static_cast<int64_t>(num_heads + num_kv_heads) * chunks;
  const int head_dim = 2 * half;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < M * units_per_row;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t m = i / units_per_row;
    const int rem = static_cast<int>(i % units_per_row);
    const int head = rem / chunks, j0 = (rem % chunks) * kPairs;
    const bool is_q = head < num_heads;
    const int kv_head = head - num_heads;
    T* x = is_q ? q + m * q_ld + static_cast<int64_t>(head) * head_dim
                : k + m * k_ld + static_cast<int64_t>(kv_head) * head_dim;

    const float4 c = *reinterpret_cast<const float4*>(cos + static_cast<int64_t>(positions[m]) * half + j0);
    const float4 s = *reinterpret_cast<const float4*>(sin + static_cast<int64_t>(positions[m]) * half + j0);
    // The 8 elements this thread owns: columns lo_col + [0, 4) and hi_col + [0, 4) of the head.
    const int lo_col = kInterleaved ? 2 * j0 : j0, hi_col = kInterleaved ? 2 * j0 + 4 : half + j0;
    float lo[4], hi[4];
    load4<T>(x + lo_col, lo);
    load4<T>(x + hi_col, hi);
    if constexpr (kInterleaved) {
      rope_rotate(lo[0], lo[1], c.x, s.x);
      rope_rotate(lo[2], lo[3], c.y, s.y);
      rope_rotate(hi[0], hi[1], c.z, s.z);
      rope_rotate(hi[2], hi[3], c.w, s.w);
    } else {
      rope_rotate(lo[0], hi[0], c.x, s.x);
      rope_rotate(lo[1], hi[1], c.y, s.y);
      rope_rotate(lo[2], hi[2], c.z, s.z);
      rope_rotate(lo[3], hi[3], c.w, s.w);
    }
    store4<T>(x + lo_col, lo);
    store4<T>(x + hi_col, hi);
    if (is_q) continue;

    const int64_t slot = slot_mapping[m];
    if (slot < 0 || slot >= num_slots) continue;  // padding token (or a slot past the cache)
    const int64_t cache_row = slot * num_kv_heads * head_dim + static_cast<int64_t>(kv_head) * head_dim;
    // Stored from the rounded activations, as kv_cache_write copies the roped k.
    store4<T>(k_cache + cache_row + lo_col, lo);
    store4<T>(k_cache + cache_row + hi_col, hi);
    const T* vh = v + m * v_ld + static_cast<int64_t>(kv_head) * head_dim;
    *reinterpret_cast<uint2*>(v_cache + cache_row + lo_col) = *reinterpret_cast<const uint2*>(vh + lo_col);
    *reinterpret_cast<uint2*>(v_cache + cache_row + hi_col) = *reinterpret_cast<const uint2*>(vh + hi_col);
  }
}

}  // namespace

Status rope_kv_write(void* q, int64_t q_ld, int64_t num_heads, void* k, int64_t k_ld, const void* v, int64_t v_ld,
                     int64_t M, const int32_t* positions, const float* cos, const float* sin, bool interleaved,
                     const int32_t* slot_mapping, const PagedKv& kv, DType act, cudaStream_t stream) {
  const std::string shapes = fmt::format(
      "rope_kv_write [M={} heads={} kv_heads={} head_dim={} q_ld={} k_ld={} v_ld={} interleaved={} act={}]", M,
      num_heads, kv.num_kv_heads, kv.head_dim, q_ld, k_ld, v_ld, interleaved, dtype_name(act));
  if (act != DType::F16 && act != DType::BF16)
    return make_error("{}: activation dtype must be F16 or BF16", shapes);
  if (kv.num_kv_heads <= 0 || kv.head_dim <= 0 || kv.head_dim % 8 != 0 || kv.num_blocks <= 0 ||
      kv.block_size <= 0)
    return make_error("{}: bad cache shape [{}, {}, {}, {}] (head_dim must be a multiple of 8)", shapes,
                      kv.num_blocks, kv.block_size, kv.num_kv_heads, kv.head_dim);
  if (M < 0 || num_heads <= 0) return make_error("{}: need M >= 0 and num_heads > 0", shapes);
  const int64_t q_width = num_heads * kv.head_dim, kv_width = kv.num_kv_heads * kv.head_dim;
  if (q_ld < q_width || k_ld < kv_width || v_ld < kv_width || q_ld % 8 != 0 || k_ld % 8 != 0 || v_ld % 8 != 0)
    return make_error("{}: row strides must cover the heads (q >= {}, k and v >= {}) and be multiples of 8",
                      shapes, q_width, kv_width);
  if (num_heads + kv.num_kv_heads > INT32_MAX / kv.head_dim) return make_error("{}: rows too wide", shapes);
  if (M == 0) return Status::Ok();
  if (q == nullptr || k == nullptr || v == nullptr || positions == nullptr || cos == nullptr || sin == nullptr ||
      slot_mapping == nullptr)
    return make_error("{}: null pointer", shapes);
  using detail::is_aligned16;
  if (!is_aligned16(q) || !is_aligned16(k) || !is_aligned16(v) || !is_aligned16(cos) || !is_aligned16(sin) ||
      !is_aligned16(kv.k_cache) || !is_aligned16(kv.v_cache))
    return make_error("{}: q, k, v, the rope tables and the caches must be 16-byte aligned", shapes);

  const int half = static_cast<int>(kv.head_dim / 2);
  const int64_t units = M * (num_heads + kv.num_kv_heads) * (half / kPairs);
  const auto blocks = static_cast<unsigned>(std::min<int64_t>((units + kThreads - 1) / kThreads, int64_t{1} << 20));
  KILN_DISPATCH_ACT(act, {
    detail::launch_kernel(interleaved ? rope_kv_write_kernel<T, true> : rope_kv_write_kernel<T, false>, blocks,
                          kThreads, 0, stream, static_cast<T*>(q), q_ld, static_cast<int>(num_heads),
                          static_cast<T*>(k), k_ld, static_cast<const T*>(v), v_ld,
                          static_cast<int>(kv.num_kv_heads), half, M, positions, cos, sin, slot_mapping,
                          kv.num_blocks * kv.block_size, static_cast<T*>(kv.k_cache), static_cast<T*>(kv.v_cache));
  });
  return check(cudaGetLastError(), shapes.c_str());
}

}  // namespace kiln::cuda
