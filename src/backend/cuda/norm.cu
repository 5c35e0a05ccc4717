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
// Bytes: read x (and r), write y (and x): 2-4 * M * D * 2 bytes; the second pass re-reads the row
// from L1/L2, not HBM, for the D of LLMs (<= 16 K elements = 32 KB per row).
#include "backend/cuda/act_traits.cuh"
#include "backend/cuda/kernels.h"
#include "backend/cuda/launch.cuh"

namespace kiln::cuda {
namespace {

using detail::load_vec;
using detail::round_to;
using detail::store_vec;

constexpr int kThreads = 256;

// x: [M, D] (written only when kAdd: x += r); r: [M, D] when kAdd; weight: [D]; y: [M, D].
template <class T, int V, bool kAdd>
__global__ void __launch_bounds__(kThreads)
    rms_norm_kernel(T* x, const T* __restrict__ r, const float* __restrict__ weight, int D, float eps,
                    T* __restrict__ y) {
  detail::allow_dependents();
  detail::wait_for_producer();  // x and r come from earlier kernels (launch.cuh)
  const int64_t offset = static_cast<int64_t>(blockIdx.x) * D;
  T* xr = x + offset;
  float sum_squares = 0.0f;
  for (int i = threadIdx.x * V; i < D; i += kThreads * V) {
    float f[V];
    load_vec<T, V>(xr + i, f);
    if constexpr (kAdd) {
      float g[V];
      load_vec<T, V>(r + offset + i, g);
#pragma unroll
      for (int v = 0; v < V; ++v) f[v] = round_to<T>(f[v] + g[v]);
      store_vec<T, V>(xr + i, f);  // re-read below by this same thread
    }
#pragma unroll
    for (int v = 0; v < V; ++v) sum_squares = fmaf(f[v], f[v], sum_squares);
  }
  const float inv_rms = rsqrtf(detail::block_sum(sum_squares) / static_cast<float>(D) + eps);
  for (int i = threadIdx.x * V; i < D; i += kThreads * V) {
    float f[V];
    load_vec<T, V>(xr + i, f);
#pragma unroll
    for (int v = 0; v < V; ++v) f[v] = round_to<T>(f[v] * inv_rms) * weight[i + v];
    store_vec<T, V>(y + offset + i, f);
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
  const bool vec =
      D % 8 == 0 && detail::is_aligned16(x) && detail::is_aligned16(y) && (!kAdd || detail::is_aligned16(r));
  KILN_DISPATCH_ACT(act, {
    auto* xt = static_cast<T*>(x);
    auto* rt = static_cast<const T*>(r);
    auto* yt = static_cast<T*>(y);
    auto* kernel = vec ? rms_norm_kernel<T, 8, kAdd> : rms_norm_kernel<T, 1, kAdd>;
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
