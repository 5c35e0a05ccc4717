// Build-time kernel choice ("tactics"): GEMV vs cuBLASLt algorithms per Linear shape and row count,
// timed on the GPU the engine is built for (see backend/backend.h, cuda_select_tactics).
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
    if (info.shape.size() == 2) act = info.dtype;
  }
  // Distinct Linear shapes: (N, K, output dtype).
  std::map<std::tuple<int64_t, int64_t, int>, bool> shapes;
  for (const Node& n : graph.nodes) {
    if (n.op != OpKind::Linear) continue;
    const DType y = n.output == graph.logits_value ? DType::F32 : act;
    shapes[{graph.values[n.output].width, n.inputs[0].width, static_cast<int>(y)}] = true;
  }
  int64_t max_m = 1, max_n = 1, max_k = 1;
  for (int64_t m : row_counts) max_m = std::max(max_m, m);
  for (const auto& [shape, unused] : shapes) {
    max_n = std::max(max_n, std::get<0>(shape));
    max_k = std::max(max_k, std::get<1>(shape));
  }
  cudaStream_t stream;
  KILN_TRY(check(cudaStreamCreate(&stream), "tactics: stream"));
  void *x = nullptr, *w = nullptr, *y = nullptr;
  auto release = [&]() {
    cudaFree(x);
    cudaFree(w);
    cudaFree(y);
    cudaStreamDestroy(stream);
  };
  // Weights: several copies' worth (at least 512 MiB) so each timed repetition reads matrices that are
  // not in L2 (50 MB on an H100), as a real step does.
  const size_t w_bytes = std::max<size_t>(size_t{512} << 20, static_cast<size_t>(max_n * max_k) * 2 * 2);
  if (cudaMalloc(&x, static_cast<size_t>(max_m * max_k) * 2) != cudaSuccess || cudaMalloc(&w, w_bytes) != cudaSuccess ||
      cudaMalloc(&y, static_cast<size_t>(max_m * max_n) * 4) != cudaSuccess) {
    cudaGetLastError();
    release();
    return make_error("tactics: cannot allocate timing buffers");
  }
  Status filled = fill_random(x, static_cast<size_t>(max_m * max_k), stream);
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
  for (const auto& [shape, unused] : shapes) {
    const auto [N, K, y_int] = shape;
    const DType y_dtype = static_cast<DType>(y_int);
    const size_t stride = (static_cast<size_t>(N * K) * 2 + 255) / 256 * 256;
    const int64_t copies = static_cast<int64_t>(std::max<size_t>(1, w_bytes / stride));
    auto w_at = [&](int rep) { return static_cast<const void*>(static_cast<char*>(w) + static_cast<size_t>(rep % copies) * stride); };
    for (int64_t M : row_counts) {
      double gemv_ms = -1;
      if (M <= cuda::kGemvMaxRows && K % 8 == 0) {
        Status s = cuda::gemv(x, M, K, w, N, nullptr, y, N, act, y_dtype, stream);  // warm-up
        cudaEventRecord(start, stream);
        for (int rep = 0; s.ok() && rep < 10; ++rep) s = cuda::gemv(x, M, K, w_at(rep), N, nullptr, y, N, act, y_dtype, stream);
        cudaEventRecord(stop, stream);
        cudaEventSynchronize(stop);
        float ms = 0;
        cudaEventElapsedTime(&ms, start, stop);
        if (s.ok()) gemv_ms = ms / 10;
      }
      auto tuned = (*gemm)->tune(x, M, K, w, copies, stride, N, y, N, act, y_dtype, stream);
      if (!tuned.ok() && gemv_ms < 0) {
        failed = tuned.error();
        break;
      }
      const bool use_gemv = gemv_ms >= 0 && (!tuned.ok() || gemv_ms <= tuned->second);
      nlohmann::json entry = {{"m", M}, {"n", N}, {"k", K}, {"y_dtype", std::string(dtype_name(y_dtype))},
                              {"kernel", use_gemv ? "gemv" : "cublaslt"}, {"gemv_ms", gemv_ms}};
      if (tuned.ok()) {
        entry["algo"] = tuned->first;
        entry["cublas_ms"] = tuned->second;
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
  return nlohmann::json{{"device_arch", arch}, {"linear", linear}};
}

}  // namespace kiln
