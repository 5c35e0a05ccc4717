// PDL switch (launch.h): capability check once, environment override, runtime toggle.
#include <atomic>
#include <cstdlib>
#include <cstring>

#include <cuda_runtime.h>

#include "backend/cuda/launch.h"

namespace kiln::cuda {
namespace {

bool device_supports_pdl() {
  int device = 0, major = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) return false;
  return major >= 9;
}

bool env_allows_pdl() {
  const char* value = std::getenv("KILN_CUDA_PDL");
  return value == nullptr || std::strcmp(value, "0") != 0;
}

std::atomic<bool> requested{true};

}  // namespace

bool programmatic_launch_enabled() {
  static const bool supported = device_supports_pdl() && env_allows_pdl();
  return supported && requested.load(std::memory_order_relaxed);
}

void set_programmatic_launch(bool enabled) { requested.store(enabled, std::memory_order_relaxed); }

}  // namespace kiln::cuda
