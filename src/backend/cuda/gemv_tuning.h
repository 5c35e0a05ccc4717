// Tuning knobs of the CUDA GEMV (backend/cuda/gemv.cu), exposed for bench/cuda_gemv_bench.cu only:
// the engine calls kiln::cuda::gemv and gemv_swiglu, which pick them themselves.
#pragma once

#include "backend/cuda/kernels.h"

namespace kiln::cuda {

struct GemvTuning {
  int k_split = 0;   // warps of a block sharing one row group, splitting K: 1, 2, 4, 8; 0 = auto
  int stage_x = -1;  // 1: x copied to shared memory per block; 0: x read through L1; -1 = auto
  int rows_per_warp = 0;  // gemv_swiglu only: rows R a warp owns, 2, 4 or 8; 0 = auto (4)
};

Status gemv_tuned(const void* x, int64_t M, int64_t K, const void* w, int64_t N, const float* bias, void* y,
                  int64_t ldy, DType act, DType y_dtype, const GemvTuning& tuning, cudaStream_t stream,
                  const GemvFusion& fusion = {});
// stage_x must be 0 or -1 (the SwiGLU input is computed as it is loaded).
Status gemv_swiglu_tuned(const void* gate, int64_t gate_ld, const void* up, int64_t up_ld, int64_t M,
                         int64_t K, const void* w, int64_t N, const float* bias, void* y, int64_t ldy,
                         DType act, DType y_dtype, const GemvTuning& tuning, cudaStream_t stream,
                         const GemvFusion& fusion = {});

}  // namespace kiln::cuda
