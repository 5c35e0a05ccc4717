// Rotary position embedding, in place, one thread per rotated pair.
// Source: HF transformers apply_rotary_pos_emb: x * cos + rotate_half(x) * sin, with
// rotate_half(x) = cat(-x2, x1): pairs (j, j + head_dim/2). llama2.c rotates adjacent pairs (2j, 2j+1).
// For a pair (a, b) at angle index j: a' = a cos - b sin, b' = b cos + a sin; f32 math, one rounding
// per output (HF multiplies in the activation dtype: cos/sin rounded first, so it differs by ~1 ulp).
// Bytes: reads and writes the rotated heads once, reads 2 * 4 bytes of table per pair (L2-resident).
#include <algorithm>
#include <string>

#include "backend/cuda/act_traits.cuh"
#include "backend/cuda/kernels.h"
#include "backend/cuda/launch.cuh"

namespace kiln::cuda {
namespace {

using detail::Act;

constexpr int kThreads = 256;

// x: rows at stride ld, heads from col_offset; cos/sin: [max_position, half]; positions: [M].
template <class T, bool kInterleaved>
__global__ void rope_kernel(T* __restrict__ x, int64_t M, int64_t ld, int64_t col_offset, int num_heads,
                            int half, const int32_t* __restrict__ positions, const float* __restrict__ cos,
                            const float* __restrict__ sin) {
  detail::allow_dependents();
  detail::wait_for_producer();  // x and positions may come from earlier kernels (launch.cuh)
  const int64_t pairs_per_row = static_cast<int64_t>(num_heads) * half;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < M * pairs_per_row;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t m = i / pairs_per_row;
    const int rem = static_cast<int>(i % pairs_per_row);
    const int h = rem / half, j = rem % half;
    T* head = x + m * ld + col_offset + static_cast<int64_t>(h) * 2 * half;
    T* pa = kInterleaved ? head + 2 * j : head + j;
    T* pb = kInterleaved ? head + 2 * j + 1 : head + j + half;
    const int64_t t = static_cast<int64_t>(positions[m]) * half + j;
    const float c = cos[t], s = sin[t];
    float a = Act<T>::to_float(*pa), b = Act<T>::to_float(*pb);
    detail::rope_rotate(a, b, c, s);
    *pa = Act<T>::from_float(a);
    *pb = Act<T>::from_float(b);
  }
}

}  // namespace

Status rope(void* x, int64_t M, int64_t ld, int64_t col_offset, int64_t num_heads, int64_t head_dim,
            const int32_t* positions, const float* cos, const float* sin, bool interleaved, DType act,
            cudaStream_t stream) {
  const std::string shapes =
      fmt::format("rope [M={} ld={} col_offset={} num_heads={} head_dim={} interleaved={} act={}]", M, ld,
                  col_offset, num_heads, head_dim, interleaved, dtype_name(act));
  if (act != DType::F16 && act != DType::BF16)
    return make_error("{}: activation dtype must be F16 or BF16", shapes);
  if (M <= 0 || num_heads <= 0 || head_dim <= 0 || head_dim % 2 != 0 || col_offset < 0)
    return make_error("{}: need M, num_heads > 0, even head_dim > 0, col_offset >= 0", shapes);
  if (col_offset + num_heads * head_dim > ld)
    return make_error("{}: heads end at column {} past the row stride", shapes,
                      col_offset + num_heads * head_dim);
  if (num_heads * head_dim > INT32_MAX) return make_error("{}: row too wide", shapes);
  if (x == nullptr || positions == nullptr || cos == nullptr || sin == nullptr)
    return make_error("{}: null pointer", shapes);
  const int64_t pairs = M * num_heads * (head_dim / 2);
  const auto blocks =
      static_cast<unsigned>(std::min<int64_t>((pairs + kThreads - 1) / kThreads, int64_t{1} << 20));
  const int heads = static_cast<int>(num_heads), half = static_cast<int>(head_dim / 2);
  KILN_DISPATCH_ACT(act, {
    auto* xt = static_cast<T*>(x);
    detail::launch_kernel(interleaved ? rope_kernel<T, true> : rope_kernel<T, false>, blocks, kThreads, 0, stream,
                          xt, M, ld, col_offset, heads, half, positions, cos, sin);
  });
  return check(cudaGetLastError(), shapes.c_str());
}

}  // namespace kiln::cuda
