// Batched-decode GEMMs through cuBLASLt: the Linear shapes of a 7B Llama (fused qkv 12288 x 4096,
// o_proj 4096 x 4096, fused gate_up 22016 x 4096, down 4096 x 11008, lm_head 32000 x 4096 with f32
// logits) at M = 8..128 rows, f16, every candidate of cuBLASLt's heuristic (up to
// CublasGemm::kMaxCandidates), against the device's own copy bandwidth.
//
// Question it answers: how close to the weight-streaming bound cuBLASLt gets at decode batch sizes,
// and what timing more than the heuristic's top few candidates (kiln build's tactics time 4) buys.
// Method as bench/cuda_gemv_bench.cu: weights rotate among buffers (> 256 MB together) so L2 cannot
// serve them, each sample times a batch of calls with CUDA events after a warm-up, the median of 9
// samples is reported; bytes = w + x + y. The last table sums one decode step's GEMMs (32 layers +
// lm_head) with the top-1, the best of the first 4 and the best of all candidates.
//
// usage: cuda_gemm_bench            (prints tables and one JSON line)
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <string>
#include <vector>

#include "backend/cuda/cublas_gemm.h"
#include "cuda_bench_util.cuh"

namespace {

using namespace kiln::bench;

struct Shape {
  const char* name;
  int64_t N, K;
  bool f32_out;
  int per_step;  // how many of these one decode step runs
};

}  // namespace

int main() {
  using kiln::DType;
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  const double copy_bw = copy_bandwidth();
  std::printf("device %s, copy bandwidth %.0f GB/s (read + write)\n", prop.name, copy_bw / 1e9);
  auto gemm = kiln::cuda::CublasGemm::create(size_t{32} << 20);
  if (!gemm.ok()) {
    std::fprintf(stderr, "%s\n", gemm.error().message.c_str());
    return 1;
  }
  const Shape shapes[] = {{"qkv", 12288, 4096, false, 32},
                          {"o_proj", 4096, 4096, false, 32},
                          {"gate_up", 22016, 4096, false, 32},
                          {"down", 4096, 11008, false, 32},
                          {"lm_head", 32000, 4096, true, 1}};
  const int rows[] = {8, 16, 32, 64, 128};
  constexpr int kMax = kiln::cuda::CublasGemm::kMaxCandidates;
  // step_us[m][0..2]: top-1, best of 4, best of all, summed over one step's GEMMs.
  std::vector<std::array<double, 3>> step_us(std::size(rows), {0, 0, 0});
  double step_bytes = 0;
  std::string json = "{\"bench\":\"cuda_gemm\",\"device\":\"" + std::string(prop.name) +
                     "\",\"copy_gbps\":" + std::to_string(copy_bw / 1e9) + ",\"results\":[";
  std::printf("\n%-8s %-5s %-5s %3s | %8s %6s | %8s %6s %4s | us per candidate\n", "shape", "N", "K", "M",
              "top1 us", "%copy", "best us", "%copy", "idx");
  for (const Shape& shape : shapes) {
    const size_t w_bytes = shape.N * shape.K * 2;
    step_bytes += static_cast<double>(w_bytes) * shape.per_step;
    const int buffers = static_cast<int>(std::max<size_t>(2, (size_t{256} << 20) / w_bytes + 1));
    std::vector<uint16_t*> w(buffers);
    for (int b = 0; b < buffers; ++b) {
      CHECK_CUDA(cudaMalloc(&w[b], w_bytes));
      fill_random<<<1024, 256>>>(w[b], shape.N * shape.K, 17 + b, false);
    }
    const int max_m = rows[std::size(rows) - 1];
    uint16_t* x;
    void* y;
    CHECK_CUDA(cudaMalloc(&x, max_m * shape.K * 2));
    CHECK_CUDA(cudaMalloc(&y, max_m * shape.N * 4));
    fill_random<<<64, 256>>>(x, max_m * shape.K, 3, false);
    CHECK_CUDA(cudaDeviceSynchronize());
    const DType y_dtype = shape.f32_out ? DType::F32 : DType::F16;
    for (size_t mi = 0; mi < std::size(rows); ++mi) {
      const int M = rows[mi];
      const double bytes = w_bytes + M * shape.K * 2.0 + M * shape.N * (shape.f32_out ? 4.0 : 2.0);
      std::vector<double> us;
      for (int c = 0; c < kMax; ++c) {
        if (!(*gemm)->pin(M, shape.K, shape.N, shape.N, DType::F16, y_dtype, false, c).ok()) break;
        us.push_back(1e6 * time_per_call([&](int call) {
          const auto status = (*gemm)->run(x, M, shape.K, w[call % buffers], shape.N, nullptr, y, shape.N,
                                           DType::F16, y_dtype, nullptr);
          if (!status.ok()) {
            std::fprintf(stderr, "%s\n", status.error().message.c_str());
            std::exit(1);
          }
        }));
      }
      if (us.empty()) {
        std::fprintf(stderr, "%s M=%d: no cuBLASLt candidate\n", shape.name, M);
        return 1;
      }
      const size_t best = std::min_element(us.begin(), us.end()) - us.begin();
      const size_t best4 = std::min_element(us.begin(), us.begin() + std::min<size_t>(4, us.size())) - us.begin();
      const auto pct = [&](double t) { return 100.0 * bytes / (t * 1e-6) / copy_bw; };
      std::printf("%-8s %-5lld %-5lld %3d | %8.2f %5.1f%% | %8.2f %5.1f%% %4zu |", shape.name,
                  static_cast<long long>(shape.N), static_cast<long long>(shape.K), M, us[0], pct(us[0]), us[best],
                  pct(us[best]), best);
      for (double t : us) std::printf(" %6.1f", t);
      std::printf("\n");
      step_us[mi][0] += us[0] * shape.per_step;
      step_us[mi][1] += us[best4] * shape.per_step;
      step_us[mi][2] += us[best] * shape.per_step;
      json += (json.back() == '[' ? "" : ",");
      json += "{\"shape\":\"" + std::string(shape.name) + "\",\"N\":" + std::to_string(shape.N) +
              ",\"K\":" + std::to_string(shape.K) + ",\"M\":" + std::to_string(M) + ",\"us\":[";
      for (size_t c = 0; c < us.size(); ++c) json += (c ? "," : "") + std::to_string(us[c]);
      json += "]}";
    }
    for (auto* b : w) CHECK_CUDA(cudaFree(b));
    CHECK_CUDA(cudaFree(x));
    CHECK_CUDA(cudaFree(y));
  }
  std::printf("\none decode step's GEMMs (32 layers + lm_head, %.2f GB of weights), us and %% of copy bandwidth:\n",
              step_bytes / 1e9);
  std::printf("%3s | %9s %6s | %9s %6s | %9s %6s\n", "M", "top1", "%", "best of 4", "%", "best", "%");
  for (size_t mi = 0; mi < std::size(rows); ++mi) {
    const auto pct = [&](double t) { return 100.0 * step_bytes / (t * 1e-6) / copy_bw; };
    std::printf("%3d | %9.0f %5.1f%% | %9.0f %5.1f%% | %9.0f %5.1f%%\n", rows[mi], step_us[mi][0],
                pct(step_us[mi][0]), step_us[mi][1], pct(step_us[mi][1]), step_us[mi][2], pct(step_us[mi][2]));
  }
  std::printf("%s]}\n", json.c_str());
  return 0;
}
