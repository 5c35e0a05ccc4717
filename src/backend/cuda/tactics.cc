// Build-time kernel choice ("tactics"): GEMV vs cuBLASLt algorithms per Linear shape and row count,
// timed on the GPU the engine is built for (see backend/backend.h, cuda_select_tactics). A SwiGluLinear
// shape also times the GEMV that applies SwiGLU itself against swiglu + GEMV and swiglu + cuBLASLt.
// Nodes with a quantized matrix are not timed: the executor runs them on gemv_quant up to
// kGemvQuantMaxRows rows (it reads 4-8 bits per weight against cuBLASLt's 16 plus a dequantization)
// and on dequantize + cuBLASLt above, whatever tactics say.
#include <algorithm>
#include <map>
#include <tuple>
#include <vector>

#include "backend/cuda/cublas_gemm.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda_plugin.h"

namespace kiln {

using cuda::check;

namespace {

// Random device data for timing (never zeros: they can run faster than real data).
Status fill_random(void* p, size_t halves, cudaStream_t stream) {
  std::vector<uint16_t> host(std::min<size_t>(halves, size_t{1} << 20));
  uint64_t state = 0x9e3779b97f4a7c15ull;
  for (uint16_t& h : host) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    h = f32_to_f16(static_cast<float>(static_cast<int64_t>(state >> 40) % 2001 - 1000) * 1e-3f);
  }
  for (size_t at = 0; at < halves; at += host.size()) {
    const size_t n = std::min(host.size(), halves - at);
    KILN_TRY(check(cudaMemcpyAsync(static_cast<uint16_t*>(p) + at, host.data(), n * 2, cudaMemcpyHostToDevice, stream),
                   "tactics: fill"));
  }
  return check(cudaStreamSynchronize(stream), "tactics: fill");
}

}  // namespace


Result<nlohmann::json> cuda_plugin::select_tactics(const Graph& graph, const std::vector<int64_t>& row_counts) {
  KILN_ASSIGN(const std::string arch, device_arch());
  DType act = DType::F16;
  for (const auto& [name, info] : graph.weights) {
    if (info.shape.size() == 2 && !info.quant) act = info.dtype;
  }
  // Distinct Linear shapes: (N, K, output dtype) -> whether the node is a SwiGluLinear (input
  // silu(gate) * up from a fused gate_up row [gate | up]; timed as such, see below).
  std::map<std::tuple<int64_t, int64_t, int, bool>, bool> shapes;
  for (const Node& n : graph.nodes) {
    if (n.op != OpKind::Linear && n.op != OpKind::SwiGluLinear) continue;
    if (const auto w = graph.weights.find(n.weights[0]); w != graph.weights.end() && w->second.quant) continue;
    const DType y = n.output == graph.logits_value ? DType::F32 : act;
    shapes[{graph.values[n.output].width, n.inputs[0].width, static_cast<int>(y),
            n.op == OpKind::SwiGluLinear}] = true;
  }
  int64_t max_m = 1, max_n = 1, max_k = 1;
  for (int64_t m : row_counts) max_m = std::max(max_m, m);
  for (const auto& [shape, unused] : shapes) {
    max_n = std::max(max_n, std::get<0>(shape));
    max_k = std::max(max_k, std::get<1>(shape));
  }
  cudaStream_t stream;
  KILN_TRY(check(cudaStreamCreate(&stream), "tactics: stream"));
  // x holds [max_m, 2 * max_k]: a SwiGluLinear reads gate and up from one row; act takes its SwiGLU.
  void *x = nullptr, *w = nullptr, *y = nullptr, *act_buf = nullptr;
  auto release = [&]() {
    cudaFree(x);
    cudaFree(w);
    cudaFree(y);
    cudaFree(act_buf);
    cudaStreamDestroy(stream);
  };
  // Weights: several copies' worth (at least 512 MiB) so each timed repetition reads matrices that are
  // not in L2 (50 MB on an H100), as a real step does.
  const size_t w_bytes = std::max<size_t>(size_t{512} << 20, static_cast<size_t>(max_n * max_k) * 2 * 2);
  if (cudaMalloc(&x, static_cast<size_t>(max_m * max_k) * 4) != cudaSuccess ||
      cudaMalloc(&w, w_bytes) != cudaSuccess ||
      cudaMalloc(&y, static_cast<size_t>(max_m * max_n) * 4) != cudaSuccess ||
      cudaMalloc(&act_buf, static_cast<size_t>(max_m * max_k) * 2) != cudaSuccess) {
    cudaGetLastError();
    release();
    return make_error("tactics: cannot allocate timing buffers");
  }
  Status filled = fill_random(x, static_cast<size_t>(max_m * max_k) * 2, stream);
  if (filled.ok()) filled = fill_random(w, w_bytes / 2, stream);
  if (!filled.ok()) {
    release();
    return filled.error();
  }
  auto gemm = cuda::CublasGemm::create(size_t{32} << 20);
  if (!gemm.ok()) {
    release();
    return gemm.error();
  }
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  nlohmann::json linear = nlohmann::json::array();
  Status failed = Status::Ok();
  // Milliseconds per call of launch(rep) over 10 calls after a warm-up call; -1 if a launch failed.
  const auto time_ms = [&](const auto& launch) {
    Status s = launch(0);
    cudaEventRecord(start, stream);
    for (int rep = 0; s.ok() && rep < 10; ++rep) s = launch(rep);
    cudaEventRecord(stop, stream);
    cudaEventSynchronize(stop);
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    return s.ok() ? ms / 10.0 : -1.0;
  };
  for (const auto& [shape, unused] : shapes) {
    const int64_t N = std::get<0>(shape), K = std::get<1>(shape);
    const DType y_dtype = static_cast<DType>(std::get<2>(shape));
    const bool swiglu_input = std::get<3>(shape);
    const size_t stride = (static_cast<size_t>(N * K) * 2 + 255) / 256 * 256;
    const int64_t copies = static_cast<int64_t>(std::max<size_t>(1, w_bytes / stride));
    auto w_at = [&](int rep) { return static_cast<const void*>(static_cast<char*>(w) + static_cast<size_t>(rep % copies) * stride); };
    // A SwiGluLinear's GEMV and GEMM read the swiglu kernel's output (whose time both pay), unless the
    // GEMV applies SwiGLU itself (gemv_swiglu_ms). In decode steps the executor may instead put SwiGLU
    // into the gate_up GEMV's epilogue (gemv_glu), so charging the kernel overstates those options: they
    // are chosen only where they win even paying for it.
    const void* up = static_cast<const char*>(x) + K * 2;
    const void* input = swiglu_input ? act_buf : x;
    for (int64_t M : row_counts) {
      const bool gemv_fits = M <= cuda::kGemvMaxRows && K % 8 == 0;
      double swiglu_ms = 0, fused_ms = -1;
      if (swiglu_input) {
        swiglu_ms =
            time_ms([&](int) { return cuda::swiglu(x, 2 * K, up, 2 * K, M, K, act_buf, act, stream); });
        if (gemv_fits) {
          fused_ms = time_ms([&](int rep) {
            return cuda::gemv_swiglu(x, 2 * K, up, 2 * K, M, K, w_at(rep), N, nullptr, y, N, act, y_dtype,
                                     stream);
          });
        }
      }
      double gemv_ms = -1;
      if (gemv_fits) {
        gemv_ms = time_ms([&](int rep) {
          return cuda::gemv(input, M, K, w_at(rep), N, nullptr, y, N, act, y_dtype, stream);
        });
        if (gemv_ms >= 0) gemv_ms += swiglu_ms;
      }
      auto tuned = (*gemm)->tune(input, M, K, w, copies, stride, N, y, N, act, y_dtype, stream);
      if (!tuned.ok() && gemv_ms < 0 && fused_ms < 0) {
        failed = tuned.error();
        break;
      }
      const double cublas_ms = tuned.ok() ? tuned->second + swiglu_ms : -1;
      std::string kernel = "cublaslt";
      double best = cublas_ms;
      for (const auto& [name, ms] :
           {std::pair<const char*, double>{"gemv", gemv_ms}, {"gemv_swiglu", fused_ms}}) {
        if (ms >= 0 && (best < 0 || ms <= best)) kernel = name, best = ms;
      }
      nlohmann::json entry = {{"m", M},           {"n", N},
                              {"k", K},           {"y_dtype", std::string(dtype_name(y_dtype))},
                              {"kernel", kernel}, {"gemv_ms", gemv_ms}};
      if (swiglu_input) {
        entry["op"] = "swiglu_linear";
        entry["gemv_swiglu_ms"] = fused_ms;
        entry["swiglu_ms"] = swiglu_ms;
      }
      if (tuned.ok()) {
        entry["algo"] = tuned->first;
        entry["cublas_ms"] = cublas_ms;
      }
      linear.push_back(entry);
    }
    if (!failed.ok()) break;
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  gemm->reset();
  release();
  if (!failed.ok()) return failed.error();
  // "algo" is an index into cuBLASLt's heuristic list, which another cuBLASLt release may order
  // differently: the loader pins it only under the same version (and otherwise takes the heuristic's top).
  return nlohmann::json{{"device_arch", arch},
                        {"cublaslt_version", static_cast<uint64_t>(cublasLtGetVersion())},
                        {"linear", linear}};
}

}  // namespace kiln
