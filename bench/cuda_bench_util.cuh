// Helpers shared by the CUDA benchmarks (cuda_attention_bench, cuda_gemv_bench, cuda_layer_bench):
// error checks that end the run with a message, random fills, event timing and the device-to-device
// copy bandwidth every table is compared against.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "common/error.h"

#define CHECK_CUDA(expr)                                                                          \
  do {                                                                                            \
    cudaError_t e_ = (expr);                                                                      \
    if (e_ != cudaSuccess) {                                                                      \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e_)); \
      std::exit(1);                                                                               \
    }                                                                                             \
  } while (0)

namespace kiln::bench {

inline void check_ok(const Status& status) {
  if (!status.ok()) {
    std::fprintf(stderr, "%s\n", status.error().message.c_str());
    std::exit(1);
  }
}

// n f16 (or bf16) values in [-scale, scale) from a hash of the index and the seed.
__global__ inline void fill_random(uint16_t* p, int64_t n, uint32_t seed, bool bf16 = false, float scale = 1.0f) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 15, h *= 2246822519u, h ^= h >> 13;
    const float v = ((h & 0xffffff) / 8388608.0f - 1.0f) * scale;
    p[i] = bf16 ? __bfloat16_as_ushort(__float2bfloat16(v)) : __half_as_ushort(__float2half(v));
  }
}
template <class T>
void fill_random_f16(T* p, int64_t n, uint32_t seed, float scale = 1.0f) {
  static_assert(sizeof(T) == 2, "16-bit elements");
  fill_random<<<1024, 256>>>(reinterpret_cast<uint16_t*>(p), n, seed, false, scale);
}

__global__ inline void fill_f32(float* p, int64_t n, float value) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
    p[i] = value;
}

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Median seconds per call of `launch(i)` over `samples` batches of `batch` calls, after `warmup`
// calls, on the default stream.
template <class F>
double time_per_call(F&& launch, int warmup = 20, int batch = 20, int samples = 9) {
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  int call = 0;
  for (int i = 0; i < warmup; ++i) launch(call++);
  std::vector<double> times;
  for (int s = 0; s < samples; ++s) {
    CHECK_CUDA(cudaEventRecord(start));
    for (int i = 0; i < batch; ++i) launch(call++);
    CHECK_CUDA(cudaEventRecord(stop));
    CHECK_CUDA(cudaEventSynchronize(stop));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
    times.push_back(ms * 1e-3 / batch);
  }
  CHECK_CUDA(cudaEventDestroy(start));
  CHECK_CUDA(cudaEventDestroy(stop));
  return median(times);
}

// Bytes per second of a 1 GiB device-to-device cudaMemcpy, read + write.
inline double copy_bandwidth() {
  const size_t bytes = size_t{1} << 30;
  void *a, *b;
  CHECK_CUDA(cudaMalloc(&a, bytes));
  CHECK_CUDA(cudaMalloc(&b, bytes));
  CHECK_CUDA(cudaMemset(a, 1, bytes));
  const double t = time_per_call(
      [&](int) { CHECK_CUDA(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice)); }, 3, 5, 5);
  CHECK_CUDA(cudaFree(a));
  CHECK_CUDA(cudaFree(b));
  return 2.0 * bytes / t;
}

}  // namespace kiln::bench
