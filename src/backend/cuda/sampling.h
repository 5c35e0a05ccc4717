// Sampling kernels of the CUDA backend.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/kernels.h"
#include "backend/sample_row.h"

namespace kiln::cuda {

// ids[r] = argmax of logits row r (lowest id on ties).  logits: [rows, vocab] f32; ids: device int32 [rows]
Status argmax(const float* logits, int64_t rows, int64_t vocab, int32_t* ids, cudaStream_t stream);

// ids[r] = the token drawn from logits row r under sampling[r], exactly as sample_row() on the host
// (semantics in backend/sample_row.h). One 1024-thread block per row; no workspace.
//   logits: [rows, vocab] f32 (vocab <= kMaxSampleVocab); sampling: device [rows]; ids: device int32 [rows]
Status sample(const float* logits, int64_t rows, int64_t vocab, const RowSampling* sampling, int32_t* ids,
              cudaStream_t stream);

}  // namespace kiln::cuda
