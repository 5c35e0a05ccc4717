#include "backend/cuda/kernels.h"

namespace kiln::cuda {

Status check(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return Status::Ok();
  return make_error("{}: CUDA error {}: {}", what, cudaGetErrorName(error), cudaGetErrorString(error));
}

}  // namespace kiln::cuda
