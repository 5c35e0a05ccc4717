// Shared by the CUDA kernel tests: GPU detection, device buffers, f16/bf16 host conversions and
// random activations. Tests call GPU_OR_SKIP() first: without a GPU they are reported as skipped.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "common/dtype.h"

namespace kiln::cuda::testing {

inline bool has_gpu() {
  int count = 0;
  const bool ok = cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
  cudaGetLastError();  // without a driver the failed query would stay as the sticky last error
  return ok;
}

#define GPU_OR_SKIP()                                                         \
  do {                                                                        \
    if (!::kiln::cuda::testing::has_gpu()) GTEST_SKIP() << "skipped: no GPU"; \
  } while (0)

// Round-trips through the activation dtype (host side, round to nearest even).
inline uint16_t to_act(double v, DType act) {
  return act == DType::F16 ? f32_to_f16(static_cast<float>(v)) : f32_to_bf16(static_cast<float>(v));
}
inline double from_act(uint16_t bits, DType act) {
  return act == DType::F16 ? f16_to_f32(bits) : bf16_to_f32(bits);
}
inline double round_act(double v, DType act) { return from_act(to_act(v, act), act); }
// Relative spacing of the activation dtype: 2^-10 (f16, 11-bit significand), 2^-7 (bf16, 8-bit).
inline double act_ulp(DType act) { return act == DType::F16 ? 0x1p-10 : 0x1p-7; }

// Random activations in [lo, hi] (never zeros by construction of the range or of the draw): bits
// for the device and the exactly representable values for the reference.
struct HostAct {
  std::vector<uint16_t> bits;
  std::vector<double> values;
};
inline HostAct random_act(std::mt19937& rng, int64_t n, DType act, double lo = -1.0, double hi = 1.0) {
  std::uniform_real_distribution<double> dist(lo, hi);
  HostAct out;
  out.bits.resize(n);
  out.values.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    out.bits[i] = to_act(dist(rng), act);
    out.values[i] = from_act(out.bits[i], act);
  }
  return out;
}
inline std::vector<float> random_f32(std::mt19937& rng, int64_t n, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// Device allocation filled with 0xFF bytes (NaN as f16, bf16 and f32) until written.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    EXPECT_EQ(cudaMalloc(&ptr_, bytes), cudaSuccess);
    poison();
  }
  template <class T>
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size() * sizeof(T)) {
    upload(host);
  }
  ~DeviceBuffer() { cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void poison() { EXPECT_EQ(cudaMemset(ptr_, 0xFF, bytes_), cudaSuccess); }
  template <class T>
  void upload(const std::vector<T>& host) {
    ASSERT_LE(host.size() * sizeof(T), bytes_);
    EXPECT_EQ(cudaMemcpy(ptr_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  }
  template <class T>
  std::vector<T> download() const {
    std::vector<T> host(bytes_ / sizeof(T));
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(host.data(), ptr_, host.size() * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return host;
  }
  template <class T = void>
  T* get() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_;
};

}  // namespace kiln::cuda::testing
