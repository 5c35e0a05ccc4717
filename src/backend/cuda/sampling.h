// Sampling kernels of the CUDA backend.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "backend/cuda/kernels.h"

namespace kiln::cuda {

// ids[r] = argmax of logits row r (lowest id on ties).  logits: [rows, vocab] f32; ids: device int32 [rows]
Status argmax(const float* logits, int64_t rows, int64_t vocab, int32_t* ids, cudaStream_t stream);

}  // namespace kiln::cuda
