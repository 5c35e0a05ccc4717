// Decode GEMV bandwidth on the GPU: kiln::cuda::gemv for the weight shapes of a 7B Llama
// (K = 4096: q/k/v/o 4096, fused qkv 12288, fused gate_up 2 * 11008, lm_head 32000; and down_proj
// K = 11008, N = 4096), M = 1..8 rows, f16 and bf16, against the device's own copy bandwidth.
//
// Method: weights rotate among enough buffers (> 256 MB together) that L2 (50 MB on H100) cannot
// serve them; each sample times a batch of launches with CUDA events after a warm-up; the median of
// the samples is reported. Bandwidth counts the bytes the kernel must move: w + x + y. The ceiling is
// a device-to-device cudaMemcpy of 1 GB measured in the same run (read + write bytes).
// Besides the automatic choice, every tuning (k_split x stage_x) is timed, to keep the heuristic honest.
// Last, the down projection with its SwiGLU input (gate_up row [gate | up], K = 11008): swiglu + gemv
// (two launches) against gemv_swiglu (one) at every rows-per-warp and k_split, plus the plain GEMV
// alone as the floor.
//
// usage: cuda_gemv_bench            (prints a table and one JSON line)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "backend/cuda/gemv_tuning.h"
#include "backend/cuda/kernels.h"
#include "cuda_bench_util.cuh"

namespace {

using namespace kiln::bench;

struct Shape {
  const char* name;
  int64_t N, K;
};


// Down projection of Llama-2-7B (N = 4096, K = 11008) reading the gate_up output [M, 2K]: microseconds
// per call of the plain GEMV (on a ready [M, K] input: the floor), swiglu + gemv, and gemv_swiglu for
// every rows-per-warp (2, 4, 8) and k_split (auto, 2, 4, 8). Appends JSON objects to `json`.
void bench_swiglu_down(std::string& json) {
  using kiln::DType;
  constexpr int64_t N = 4096, K = 11008;
  const size_t w_bytes = N * K * 2;
  const int buffers = static_cast<int>((size_t{256} << 20) / w_bytes + 1);
  std::vector<uint16_t*> w(buffers);
  uint16_t *gate_up, *act;
  float* y;
  for (auto*& b : w) CHECK_CUDA(cudaMalloc(&b, w_bytes));
  CHECK_CUDA(cudaMalloc(&gate_up, 8 * 2 * K * 2));
  CHECK_CUDA(cudaMalloc(&act, 8 * K * 2));
  CHECK_CUDA(cudaMalloc(&y, 8 * N * 4));
  std::printf("down_proj %lldx%lld with SwiGLU input, us per call (weights rotate beyond L2):\n",
              static_cast<long long>(N), static_cast<long long>(K));
  std::printf("%-5s %1s | %9s %9s | %9s |", "dtype", "M", "gemv", "sw+gemv", "fused");
  const int rows_per_warp[] = {2, 4, 8};
  const int k_splits[] = {0, 2, 4, 8};
  for (int r : rows_per_warp)
    for (int k : k_splits) std::printf(" R%d/k%-3s", r, k == 0 ? "a" : std::to_string(k).c_str());
  std::printf("\n");
  for (DType act_dtype : {DType::BF16, DType::F16}) {
    for (int b = 0; b < buffers; ++b)
      fill_random<<<1024, 256>>>(w[b], N * K, 29 + b, act_dtype == DType::BF16);
    fill_random<<<64, 256>>>(gate_up, 8 * 2 * K, 5, act_dtype == DType::BF16);
    fill_random<<<64, 256>>>(act, 8 * K, 6, act_dtype == DType::BF16);
    CHECK_CUDA(cudaDeviceSynchronize());
    for (int M : {1, 2, 4, 8}) {
      const double plain = time_per_call([&](int call) {
        check_ok(
            kiln::cuda::gemv(act, M, K, w[call % buffers], N, nullptr, y, N, act_dtype, act_dtype, nullptr));
      });
      const double composed = time_per_call([&](int call) {
        check_ok(kiln::cuda::swiglu(gate_up, 2 * K, gate_up + K, 2 * K, M, K, act, act_dtype, nullptr));
        check_ok(
            kiln::cuda::gemv(act, M, K, w[call % buffers], N, nullptr, y, N, act_dtype, act_dtype, nullptr));
      });
      const auto fused_us = [&](const kiln::cuda::GemvTuning& tuning) {
        return 1e6 * time_per_call([&](int call) {
                 check_ok(kiln::cuda::gemv_swiglu_tuned(gate_up, 2 * K, gate_up + K, 2 * K, M, K,
                                                             w[call % buffers], N, nullptr, y, N, act_dtype,
                                                             act_dtype, tuning, nullptr));
               });
      };
      const double fused_auto = fused_us({});
      std::printf("%-5s %d | %9.2f %9.2f | %9.2f |", std::string(kiln::dtype_name(act_dtype)).c_str(), M,
                  plain * 1e6, composed * 1e6, fused_auto);
      std::string tunings;
      for (int r : rows_per_warp) {
        for (int k : k_splits) {
          kiln::cuda::GemvTuning tuning;
          tuning.rows_per_warp = r;
          tuning.k_split = k;
          const double us = fused_us(tuning);
          std::printf(" %8.2f", us);
          tunings += (tunings.empty() ? "" : ",") + std::string("\"R") + std::to_string(r) + "_k" +
                     std::to_string(k) + "\":" + std::to_string(us);
        }
      }
      std::printf("\n");
      json += (json.back() == '[' ? "" : ",");
      json += "{\"dtype\":\"" + std::string(kiln::dtype_name(act_dtype)) + "\",\"M\":" + std::to_string(M) +
              ",\"gemv_us\":" + std::to_string(plain * 1e6) +
              ",\"swiglu_gemv_us\":" + std::to_string(composed * 1e6) +
              ",\"gemv_swiglu_us\":" + std::to_string(fused_auto) + ",\"tunings\":{" + tunings + "}}";
    }
  }
  std::printf(
      "(gemv: the plain GEMV on a ready [M, K] input; sw+gemv: swiglu kernel then gemv, two launches; "
      "fused:\n"
      " gemv_swiglu, auto tuning; R<r>/k<s>: rows per warp r, k_split s, a = auto)\n\n");
  for (auto* b : w) CHECK_CUDA(cudaFree(b));
  CHECK_CUDA(cudaFree(gate_up));
  CHECK_CUDA(cudaFree(act));
  CHECK_CUDA(cudaFree(y));
}

}  // namespace

int main() {
  using kiln::DType;
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  const double copy_bw = copy_bandwidth();
  std::printf("device: %s, %d SMs, L2 %d MB; device-to-device copy %.0f GB/s (read + write)\n", prop.name,
              prop.multiProcessorCount, prop.l2CacheSize >> 20, copy_bw / 1e9);

  const Shape shapes[] = {{"q/o_proj", 4096, 4096},
                          {"qkv", 12288, 4096},
                          {"gate_up", 2 * 11008, 4096},
                          {"lm_head", 32000, 4096},
                          {"down_proj", 4096, 11008}};
  const int rows[] = {1, 2, 4, 8};
  struct Variant {
    const char* name;
    kiln::cuda::GemvTuning tuning;
  };
  std::vector<Variant> variants = {{"auto", {}}};
  static const char* names[] = {"k1/L1",   "k2/L1",   "k4/L1",   "k8/L1",
                                "k1/smem", "k2/smem", "k4/smem", "k8/smem"};
  for (int stage = 0; stage < 2; ++stage)
    for (int k = 0; k < 4; ++k) variants.push_back({names[stage * 4 + k], {1 << k, stage}});

  std::printf("\n%-9s %-5s %-4s %1s | %8s %8s %6s | %-8s %8s | GB/s per tuning:", "shape", "N", "K", "M",
              "auto us", "GB/s", "%copy", "best", "GB/s");
  for (size_t v = 1; v < variants.size(); ++v) std::printf(" %7s", variants[v].name);
  std::printf("\n");
  std::string json = "{\"bench\":\"cuda_gemv\",\"device\":\"" + std::string(prop.name) +
                     "\",\"copy_gbps\":" + std::to_string(copy_bw / 1e9) + ",\"results\":[";
  for (DType act : {DType::BF16, DType::F16}) {
    for (const Shape& shape : shapes) {
      const size_t w_bytes = shape.N * shape.K * 2;
      const int buffers = static_cast<int>(std::max<size_t>(2, (size_t{256} << 20) / w_bytes + 1));
      std::vector<uint16_t*> w(buffers);
      for (int b = 0; b < buffers; ++b) {
        CHECK_CUDA(cudaMalloc(&w[b], w_bytes));
        fill_random<<<1024, 256>>>(w[b], shape.N * shape.K, 17 + b, act == DType::BF16);
      }
      uint16_t* x;
      float* y;
      CHECK_CUDA(cudaMalloc(&x, 8 * shape.K * 2));
      CHECK_CUDA(cudaMalloc(&y, 8 * shape.N * 4));
      fill_random<<<64, 256>>>(x, 8 * shape.K, 3, act == DType::BF16);
      CHECK_CUDA(cudaDeviceSynchronize());
      for (int M : rows) {
        const double bytes = w_bytes + M * shape.K * 2.0 + M * shape.N * 2.0;
        std::vector<double> gbps;
        for (const Variant& v : variants) {
          const bool fits = !v.tuning.stage_x || M * shape.K * 2 + 4096 <= prop.sharedMemPerBlockOptin;
          if (!fits) {
            gbps.push_back(0);
            continue;
          }
          const double t = time_per_call([&](int call) {
            const auto status = kiln::cuda::gemv_tuned(x, M, shape.K, w[call % buffers], shape.N, nullptr, y,
                                                       shape.N, act, act, v.tuning, nullptr);
            if (!status.ok()) {
              std::fprintf(stderr, "%s\n", status.error().message.c_str());
              std::exit(1);
            }
          });
          gbps.push_back(bytes / t / 1e9);
          if (gbps.size() == 1) {
            std::printf("%-9s %-5lld %-5lld%d | %8.2f %8.0f %5.1f%% |", shape.name,
                        static_cast<long long>(shape.N), static_cast<long long>(shape.K), M, t * 1e6,
                        bytes / t / 1e9, 100.0 * bytes / t / copy_bw);
            json += (json.back() == '[' ? "" : ",");
            json += "{\"dtype\":\"" + std::string(kiln::dtype_name(act)) +
                    "\",\"N\":" + std::to_string(shape.N) + ",\"K\":" + std::to_string(shape.K) +
                    ",\"M\":" + std::to_string(M) + ",\"us\":" + std::to_string(t * 1e6) +
                    ",\"gbps\":" + std::to_string(bytes / t / 1e9) + "}";
          }
        }
        const size_t best = std::max_element(gbps.begin() + 1, gbps.end()) - gbps.begin();
        std::printf(" %-8s %8.0f |", variants[best].name, gbps[best]);
        for (size_t v = 1; v < gbps.size(); ++v) std::printf(" %7.0f", gbps[v]);
        std::printf("\n");
      }
      for (auto* b : w) CHECK_CUDA(cudaFree(b));
      CHECK_CUDA(cudaFree(x));
      CHECK_CUDA(cudaFree(y));
    }
    std::printf("(above: %s)\n\n", std::string(kiln::dtype_name(act)).c_str());
  }
  json += "],\"swiglu_down\":[";
  bench_swiglu_down(json);
  std::printf("%s]}\n", json.c_str());
  return 0;
}
