// Elementwise and copy kernels: residual add, SwiGLU, embedding lookup, row gather.
// Every kernel waits for its producer on entry (programmatic dependent launch, launch.cuh).
// All are bandwidth-bound one-pass kernels: 16-byte accesses (8 elements) whenever sizes, strides and
// pointers allow, scalar otherwise; f32 math, one rounding to the activation dtype per output.
#include <algorithm>
#include <string>

#include "backend/cuda/act_traits.cuh"
#include "backend/cuda/kernels.h"
#include "backend/cuda/launch.cuh"

namespace kiln::cuda {
namespace {

using detail::is_aligned16;
using detail::load_vec;
using detail::store_vec;

constexpr int kThreads = 256;

unsigned blocks_for(int64_t items) {
  // Grid-stride loops below; 2^20 blocks already fill any GPU many times over.
  return static_cast<unsigned>(std::clamp<int64_t>((items + kThreads - 1) / kThreads, 1, int64_t{1} << 20));
}

Status check_act(const std::string& shapes, DType act) {
  if (act != DType::F16 && act != DType::BF16)
    return make_error("{}: activation dtype must be F16 or BF16", shapes);
  return Status::Ok();
}

// x[i] += r[i] for i < n (n counted in elements; vectors of V).
template <class T, int V>
__global__ void add_kernel(T* __restrict__ x, const T* __restrict__ r, int64_t n) {
  detail::allow_dependents();
  detail::wait_for_producer();
  for (int64_t i = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) * V; i < n;
       i += static_cast<int64_t>(gridDim.x) * kThreads * V) {
    float a[V], b[V];
    load_vec<T, V>(x + i, a);
    load_vec<T, V>(r + i, b);
#pragma unroll
    for (int v = 0; v < V; ++v) a[v] += b[v];
    store_vec<T, V>(x + i, a);
  }
}

// out[m, f] = silu(gate[m, f]) * up[m, f]; silu(g) = g / (1 + exp(-g)) (HF ACT2FN["silu"]), in f32.
// gate: [M, F] stride gate_ld; up: [M, F] stride up_ld; out: [M, F].
template <class T, int V>
__global__ void swiglu_kernel(const T* __restrict__ gate, int64_t gate_ld, const T* __restrict__ up,
                              int64_t up_ld, int64_t M, int64_t F, T* __restrict__ out) {
  detail::allow_dependents();
  detail::wait_for_producer();
  const int64_t vecs_per_row = F / V;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < M * vecs_per_row;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t m = i / vecs_per_row, f = (i % vecs_per_row) * V;
    float g[V], u[V];
    load_vec<T, V>(gate + m * gate_ld + f, g);
    load_vec<T, V>(up + m * up_ld + f, u);
#pragma unroll
    for (int v = 0; v < V; ++v) g[v] = detail::silu_mul(g[v], u[v]);
    store_vec<T, V>(out + m * F + f, g);
  }
}

// out[m, :] = in[rows[m], :]; one block per output row. Rows outside [0, num_rows) (num_rows < 0:
// unbounded above) give a zero row instead of an out-of-bounds read: ids are validated on the host
// before they reach the GPU, this only keeps a bug from reading foreign memory.
template <int kBytes>
__global__ void gather_rows_kernel(const char* __restrict__ in, const int32_t* __restrict__ rows,
                                   int64_t num_rows, int64_t row_bytes, char* __restrict__ out) {
  detail::allow_dependents();
  detail::wait_for_producer();
  using Word = std::conditional_t<kBytes == 16, uint4, uint16_t>;
  const int64_t row = rows[blockIdx.x];
  const bool valid = row >= 0 && (num_rows < 0 || row < num_rows);
  const auto* src = reinterpret_cast<const Word*>(in + row * row_bytes);
  auto* dst = reinterpret_cast<Word*>(out + static_cast<int64_t>(blockIdx.x) * row_bytes);
  for (int64_t i = threadIdx.x; i < row_bytes / kBytes; i += kThreads) dst[i] = valid ? src[i] : Word{};
}

Status launch_gather(const char* in, const int32_t* rows, int64_t R, int64_t num_rows, int64_t D, char* out,
                     cudaStream_t stream) {
  const int64_t row_bytes = D * 2;
  auto* kernel = row_bytes % 16 == 0 && is_aligned16(in) && is_aligned16(out) ? gather_rows_kernel<16>
                                                                              : gather_rows_kernel<2>;
  return check(detail::launch_kernel(kernel, static_cast<unsigned>(R), kThreads, 0, stream, in, rows, num_rows,
                                     row_bytes, out),
               "gather_rows launch");
}

}  // namespace

Status add(void* x, const void* r, int64_t M, int64_t D, DType act, cudaStream_t stream) {
  const std::string shapes = fmt::format("add [M={} D={} act={}]", M, D, dtype_name(act));
  KILN_TRY(check_act(shapes, act));
  if (M <= 0 || D <= 0) return make_error("{}: need M > 0 and D > 0", shapes);
  if (x == nullptr || r == nullptr) return make_error("{}: null pointer", shapes);
  const int64_t n = M * D;
  const bool vec = n % 8 == 0 && is_aligned16(x) && is_aligned16(r);
  KILN_DISPATCH_ACT(act, {
    detail::launch_kernel(vec ? add_kernel<T, 8> : add_kernel<T, 1>, blocks_for(vec ? n / 8 : n), kThreads, 0,
                          stream, static_cast<T*>(x), static_cast<const T*>(r), n);
  });
  return check(cudaGetLastError(), shapes.c_str());
}

Status swiglu(const void* gate, int64_t gate_ld, const void* up, int64_t up_ld, int64_t M, int64_t F,
              void* out, DType act, cudaStream_t stream) {
  const std::string shapes =
      fmt::format("swiglu [M={} F={} gate_ld={} up_ld={} act={}]", M, F, gate_ld, up_ld, dtype_name(act));
  KILN_TRY(check_act(shapes, act));
  if (M <= 0 || F <= 0 || gate_ld < F || up_ld < F)
    return make_error("{}: need M > 0, F > 0, strides >= F", shapes);
  if (gate == nullptr || up == nullptr || out == nullptr) return make_error("{}: null pointer", shapes);
  const bool vec = F % 8 == 0 && gate_ld % 8 == 0 && up_ld % 8 == 0 && is_aligned16(gate) &&
                   is_aligned16(up) && is_aligned16(out);
  KILN_DISPATCH_ACT(act, {
    const auto* g = static_cast<const T*>(gate);
    const auto* u = static_cast<const T*>(up);
    auto* o = static_cast<T*>(out);
    detail::launch_kernel(vec ? swiglu_kernel<T, 8> : swiglu_kernel<T, 1>, blocks_for(vec ? M * F / 8 : M * F),
                          kThreads, 0, stream, g, gate_ld, u, up_ld, M, F, o);
  });
  return check(cudaGetLastError(), shapes.c_str());
}

Status embedding(const int32_t* ids, int64_t M, const void* table, int64_t V, int64_t D, void* out, DType act,
                 cudaStream_t stream) {
  const std::string shapes = fmt::format("embedding [M={} V={} D={} act={}]", M, V, D, dtype_name(act));
  KILN_TRY(check_act(shapes, act));
  if (M <= 0 || V <= 0 || D <= 0) return make_error("{}: need M, V, D > 0", shapes);
  if (M > INT32_MAX) return make_error("{}: M must fit in 32 bits", shapes);
  if (ids == nullptr || table == nullptr || out == nullptr) return make_error("{}: null pointer", shapes);
  KILN_TRY(launch_gather(static_cast<const char*>(table), ids, M, V, D, static_cast<char*>(out), stream));
  return check(cudaGetLastError(), shapes.c_str());
}

Status gather_rows(const void* in, const int32_t* rows, int64_t R, int64_t D, void* out, DType act,
                   cudaStream_t stream) {
  const std::string shapes = fmt::format("gather_rows [R={} D={} act={}]", R, D, dtype_name(act));
  KILN_TRY(check_act(shapes, act));
  if (R <= 0 || D <= 0) return make_error("{}: need R > 0 and D > 0", shapes);
  if (R > INT32_MAX) return make_error("{}: R must fit in 32 bits", shapes);
  if (in == nullptr || rows == nullptr || out == nullptr) return make_error("{}: null pointer", shapes);
  KILN_TRY(launch_gather(static_cast<const char*>(in), rows, R, -1, D, static_cast<char*>(out), stream));
  return check(cudaGetLastError(), shapes.c_str());
}

}  // namespace kiln::cuda
