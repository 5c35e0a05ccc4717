// GEMMs through cuBLASLt for prefill and large batches: y[M, N] = x[M, K] @ w[N, K]^T (+ bias).
// Algorithms are chosen once per (M, N, K, dtypes) by cuBLASLt's heuristic (or pinned by a tactic
// recorded in the engine) and cached, so a step does no heuristic query and no allocation.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <tuple>

#include <cublasLt.h>
#include <cuda_runtime.h>

#include "common/dtype.h"
#include "common/error.h"

namespace kiln::cuda {

class CublasGemm {
 public:
  // The heuristic's candidates a tactic may name (an engine's recorded index must stay below this).
  static constexpr int kMaxCandidates = 16;
  // How many of them a build's tactics time per shape (bench/cuda_gemm_bench: more buy ~0.4%).
  static constexpr int kTunedCandidates = 4;

  static Result<std::unique_ptr<CublasGemm>> create(size_t workspace_bytes);
  ~CublasGemm();

  // x: [M, K] act (row stride K); w: [N, K] act; bias: [N] in y's dtype or null; y: [M, N] stride ldy.
  Status run(const void* x, int64_t M, int64_t K, const void* w, int64_t N, const void* bias, void* y, int64_t ldy,
             DType act, DType y_dtype, cudaStream_t stream);

  // Uses the heuristic's candidate `candidate` for this shape from now on (a tactic from the engine).
  Status pin(int64_t M, int64_t K, int64_t N, int64_t ldy, DType act, DType y_dtype, bool bias, int candidate) {
    auto plan = plan_for(M, K, N, ldy, act, y_dtype, bias, candidate);
    return plan.ok() ? Status::Ok() : Status(plan.error());
  }

  // Times the heuristic's top `candidates` for this shape and keeps the fastest (a "tactic").
  // Repetition r reads the weights at w + (r % w_copies) * w_stride bytes, so timings of matrices
  // smaller than L2 are not served from the cache. Returns the chosen candidate index and its time.
  Result<std::pair<int, float>> tune(const void* x, int64_t M, int64_t K, const void* w, int64_t w_copies,
                                     size_t w_stride, int64_t N, void* y, int64_t ldy, DType act, DType y_dtype,
                                     cudaStream_t stream, int candidates = kTunedCandidates);

 private:
  struct Plan {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
    cublasLtMatmulAlgo_t algo{};
    bool has_bias = false;
    void release();  // destroys the descriptors and layouts (safe on a default Plan)
  };
  using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int, int, bool>;
  Result<Plan*> plan_for(int64_t M, int64_t K, int64_t N, int64_t ldy, DType act, DType y_dtype, bool bias, int candidate);

  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  std::map<Key, Plan> plans_;
};

}  // namespace kiln::cuda
