// rms_norm and the fused residual add + rms_norm, one block per row.
//
// Source: HF transformers LlamaRMSNorm.forward:
//   h = x.float(); variance = h.pow(2).mean(-1); h = h * rsqrt(variance + eps);
//   return weight * h.to(input_dtype)
// The normalized value is rounded to the activation dtype before the weight multiplies it, as HF
// does; our weight is f32 (the engine keeps norm weights in f32), so the product is then rounded once
// to the activation dtype. With bf16 weights (HF) the product would round the weight first; weights
// converted from bf16 to f32 are exact, so only f16/bf16 product rounding differs (half an ulp).
// add_rms_norm models HF's `hidden = residual + hidden` in the activation dtype: the sum is rounded,
// stored back to x (the residual stream), and that rounded sum is normalized.
//
// Bytes: read x (and r), write y (and x): 2-4 * M * D * 2 bytes. Rows up to 8192 wide stay in
// registers between the sum and the scaling; wider ones are re-read from L1/L2.
#include "backend/cuda/act_traits.cuh"
#include "backend/cuda/kernels.h"
#include "backend/cuda/launch.cuh"

namespace kiln::cuda {
namespace {

using detail::load_vec;
using detail::round_to;
using detail::store_vec;

constexpr int kThreads = 256;

// weight[i, i + V) into w: two 16-byte loads when V == 8 (the host checked weight's alignment).
template <int V>
__device__ __forceinline__ void load_weights(const float* __restrict__ weight, int i, float (&w)[V]) {
  if constexpr (V == 8) {
    const float4 a = __ldg(reinterpret_cast<const float4*>(weight + i));
    const float4 b = __ldg(reinterpret_cast<const float4*>(weight + i + 4));
    w[0] = a.x, w[1] = a.y, w[2] = a.z, w[3] = a.w, w[4] = b.x, w[5] = b.y, w[6] = b.z, w[7] = b.w;
  } else {
#pragma unroll
    for (int v = 0; v < V; ++v) w[v] = __ldg(weight + i + v);
  }
}

// f = x[i, i + V), with kAdd the rounded x + r, which is stored back to x; adds f's squares to
// sum_squares in element order.
template <class T, int V, bool kAdd>
__device__ __forceinline__ void load_row(T* x, const T* __restrict__ r, int i, float (&f)[V], float& sum_squares) {
  load_vec<T, V>(x + i, f);
  if constexpr (kAdd) {
    float g[V];
    load_vec<T, V>(r + i, g);
#pragma unroll
    for (int v = 0; v < V; ++v) f[v] = round_to<T>(f[v] + g[v]);
    store_vec<T, V>(x + i, f);
  }
#pragma unroll
  for (int v = 0; v < V; ++v) sum_squares = fmaf(f[v], f[v], sum_squares);
}

// y[i, i + V) = the normalized f (rounded to T) times the weight, rounded once.
template <class T, int V>
__device__ __forceinline__ void store_normed(T* __restrict__ y, int i, float (&f)[V], float inv_rms,
                                             const float (&w)[V]) {
#pragma unroll
  for (int v = 0; v < V; ++v) f[v] = round_to<T>(f[v] * inv_rms) * w[v];
  store_vec<T, V>(y + i, f);
}

// x: [M, D] (written only when kAdd: x += r); r: [M, D] when kAdd; weight: [D]; y: [M, D].
// kIters > 0: the row is held in registers (kIters vectors of V per thread, D <= kIters * kThreads * V)
// and the thread's weights are loaded before griddepcontrol.wait (they do not depend on the previous
// kernel), so the dependent chain is one load of x (and r), the block sum and one store: a decode
// step's norms are latency-bound (one 4096-wide row). kIters == 0: any D, the row re-read from L1/L2.
// Both forms do the same operations in the same order (same bits).
template <class T, int V, bool kAdd, int kIters>
__global__ void __launch_bounds__(kThreads)
    rms_norm_kernel(T* x, const T* __restrict__ r, const float* __restrict__ weight, int D, float eps,
                    T* __restrict__ y) {
  detail::allow_dependents();
  const int64_t offset = static_cast<int64_t>(blockIdx.x) * D;
  T* xr = x + offset;
  const T* rr = kAdd ? r + offset : nullptr;
  T* yr = y + offset;
  float sum_squares = 0.0f;
  if constexpr (kIters > 0) {
    float w[kIters][V];
#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      const int i = (it * kThreads + threadIdx.x) * V;
      if (i >= D) break;
      load_weights<V>(weight, i, w[it]);
    }
    detail::wait_for_producer();  // x and r come from earlier kernels (launch.cuh)
    float f[kIters][V];
#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      const int i = (it * kThreads + threadIdx.x) * V;
      if (i >= D) break;
      load_row<T, V, kAdd>(xr, rr, i, f[it], sum_squares);
    }
    const float inv_rms = rsqrtf(detail::block_sum(sum_squares) / static_cast<float>(D) + eps);
#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      const int i = (it * kThreads + threadIdx.x) * V;
      if (i >= D) break;
      store_normed<T, V>(yr, i, f[it], inv_rms, w[it]);
    }
    return;
  }
  detail::wait_for_producer();  // x and r come from earlier kernels (launch.cuh)
  for (int i = threadIdx.x * V; i < D; i += kThreads * V) {
    float f[V];
    load_row<T, V, kAdd>(xr, rr, i, f, sum_squares);  // x is re-read below by this same thread
  }
  const float inv_rms = rsqrtf(detail::block_sum(sum_squares) / static_cast<float>(D) + eps);
  for (int i = threadIdx.x * V; i < D; i += kThreads * V) {
    float f[V], w[V];
    load_vec<T, V>(xr + i, f);
    load_weights<V>(weight, i, w);
    store_normed<T, V>(yr, i, f, inv_rms, w);
  }
}

template <bool kAdd>
Status launch(const char* name, void* x, const void* r, const float* weight, int64_t M, int64_t D, float eps,
              void* y, DType act, cudaStream_t stream) {
  const std::string shapes = fmt::format("{} [M={} D={} act={}]", name, M, D, dtype_name(act));
  if (act != DType::F16 && act != DType::BF16)
    return make_error("{}: activation dtype must be F16 or BF16", shapes);
  if (M <= 0 || D <= 0) return make_error("{}: need M > 0 and D > 0", shapes);
  if (M > INT32_MAX || D > INT32_MAX) return make_error("{}: M and D must fit in 32 bits", shapes);
  if (x == nullptr || weight == nullptr || y == nullptr || (kAdd && r == nullptr))
    return make_error("{}: null pointer", shapes);
  const bool vec = D % 8 == 0 && detail::is_aligned16(x) && detail::is_aligned16(y) &&
                   (!kAdd || detail::is_aligned16(r)) && detail::is_aligned16(weight);
  KILN_DISPATCH_ACT(act, {
    auto* xt = static_cast<T*>(x);
    auto* rt = static_cast<const T*>(r);
    auto* yt = static_cast<T*>(y);
    // Rows of up to 4 vectors of 8 per thread (D <= 8192) stay in registers.
    constexpr int64_t kRow = kThreads * 8;
    auto* kernel = !vec            ? rms_norm_kernel<T, 1, kAdd, 0>
                   : D <= kRow     ? rms_norm_kernel<T, 8, kAdd, 1>
                   : D <= 2 * kRow ? rms_norm_kernel<T, 8, kAdd, 2>
                   : D <= 4 * kRow ? rms_norm_kernel<T, 8, kAdd, 4>
                                   : rms_norm_kernel<T, 8, kAdd, 0>;
    detail::launch_kernel(kernel, static_cast<unsigned>(M), kThreads, 0, stream, xt, rt, weight,
                          static_cast<int>(D), eps, yt);
  });
  return check(cudaGetLastError(), shapes.c_str());
}

}  // namespace

Status rms_norm(const void* x, const float* weight, int64_t M, int64_t D, float eps, void* y, DType act,
                cudaStream_t stream) {
  // x is only read on this path (kAdd = false).
  return launch<false>("rms_norm", const_cast<void*>(x), nullptr, weight, M, D, eps, y, act, stream);
}

Status add_rms_norm(void* x, const void* r, const float* weight, int64_t M, int64_t D, float eps, void* y,
                    DType act, cudaStream_t stream) {
  return launch<true>("add_rms_norm", x, r, weight, M, D, eps, y, act, stream);
}

}  // namespace kiln::cuda
