#include "backend/cuda/cublas_gemm.h"

#include <vector>

#include "backend/cuda/kernels.h"

namespace kiln::cuda {

namespace {

Status check_blas(cublasStatus_t status, const char* what) {
  if (status == CUBLAS_STATUS_SUCCESS) return Status::Ok();
  return make_error("{}: cuBLASLt status {}", what, static_cast<int>(status));
}

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::F16: return CUDA_R_16F;
    case DType::BF16: return CUDA_R_16BF;
    default: return CUDA_R_32F;
  }
}

}  // namespace

void CublasGemm::Plan::release() {
  for (cublasLtMatrixLayout_t* layout : {&a, &b, &d}) {
    if (*layout) cublasLtMatrixLayoutDestroy(*layout);
    *layout = nullptr;
  }
  if (op) cublasLtMatmulDescDestroy(op);
  op = nullptr;
}

Result<std::unique_ptr<CublasGemm>> CublasGemm::create(size_t workspace_bytes) {
  std::unique_ptr<CublasGemm> gemm(new CublasGemm());
  KILN_TRY(check_blas(cublasLtCreate(&gemm->handle_), "cublasLtCreate"));
  KILN_TRY(check(cudaMalloc(&gemm->workspace_, workspace_bytes), "cudaMalloc(cuBLASLt workspace)"));
  gemm->workspace_bytes_ = workspace_bytes;
  return gemm;
}

CublasGemm::~CublasGemm() {
  for (auto& [key, plan] : plans_) plan.release();
  if (workspace_) cudaFree(workspace_);
  if (handle_) cublasLtDestroy(handle_);
}

// Row-major y[M, N] = x[M, K] w[N, K]^T is column-major D[N, M] = op(A)[N, K] B[K, M] with
// A = w seen column-major as [K, N] (transposed), B = x seen column-major as [K, M].
Result<CublasGemm::Plan*> CublasGemm::plan_for(int64_t M, int64_t K, int64_t N, int64_t ldy, DType act, DType y_dtype,
                                               bool bias, int candidate) {
  const Key key{M, K, N, ldy, static_cast<int>(act), static_cast<int>(y_dtype), bias};
  auto it = plans_.find(key);
  if (it != plans_.end() && candidate < 0) return &it->second;
  const std::string where = fmt::format("cuBLASLt GEMM [M={}, N={}, K={}]", M, N, K);
  if (candidate >= kMaxCandidates) {
    return make_error("{}: algorithm candidate {} is out of range (at most {} are queried)", where, candidate,
                      kMaxCandidates - 1);
  }
  // Owns the descriptors until the plan is stored, so every error return below releases them.
  struct Guard {
    Plan plan;
    ~Guard() { plan.release(); }
  } guard;
  Plan& plan = guard.plan;
  KILN_TRY(check_blas(cublasLtMatmulDescCreate(&plan.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), where.c_str()));
  const cublasOperation_t trans = CUBLAS_OP_T, no_trans = CUBLAS_OP_N;
  cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_TRANSA, &trans, sizeof(trans));
  cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_TRANSB, &no_trans, sizeof(no_trans));
  if (bias) {
    const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
    cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue));
    plan.has_bias = true;
  }
  KILN_TRY(check_blas(cublasLtMatrixLayoutCreate(&plan.a, cuda_type(act), K, N, K), where.c_str()));
  KILN_TRY(check_blas(cublasLtMatrixLayoutCreate(&plan.b, cuda_type(act), K, M, K), where.c_str()));
  KILN_TRY(check_blas(cublasLtMatrixLayoutCreate(&plan.d, cuda_type(y_dtype), N, M, ldy), where.c_str()));
  cublasLtMatmulPreference_t pref;
  cublasLtMatmulPreferenceCreate(&pref);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes_,
                                       sizeof(workspace_bytes_));
  cublasLtMatmulHeuristicResult_t results[kMaxCandidates];
  int found = 0;
  const cublasStatus_t heuristic = cublasLtMatmulAlgoGetHeuristic(handle_, plan.op, plan.a, plan.b, plan.d, plan.d,
                                                                   pref, kMaxCandidates, results, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (heuristic != CUBLAS_STATUS_SUCCESS) found = 0;
  const int pick = candidate < 0 ? 0 : candidate;
  if (found <= pick) {
    if (candidate < 0) return make_error("{}: no cuBLASLt algorithm for this shape and dtype", where);
    return make_error("{}: the heuristic offers {} algorithm(s), candidate {} was asked for", where, found, candidate);
  }
  plan.algo = results[pick].algo;
  Plan* stored;
  if (it != plans_.end()) {
    it->second.release();
    it->second = plan;
    stored = &it->second;
  } else {
    stored = &plans_.emplace(key, plan).first->second;
  }
  guard.plan = Plan{};  // ownership moved into plans_
  return stored;
}

Status CublasGemm::run(const void* x, int64_t M, int64_t K, const void* w, int64_t N, const void* bias, void* y,
                       int64_t ldy, DType act, DType y_dtype, cudaStream_t stream) {
  KILN_ASSIGN(Plan* plan, plan_for(M, K, N, ldy, act, y_dtype, bias != nullptr, -1));
  if (bias) {
    cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias));
  }
  const float alpha = 1.0f, beta = 0.0f;
  const cublasStatus_t status = cublasLtMatmul(handle_, plan->op, &alpha, w, plan->a, x, plan->b, &beta, y, plan->d, y,
                                               plan->d, &plan->algo, workspace_, workspace_bytes_, stream);
  if (status != CUBLAS_STATUS_SUCCESS) {
    return make_error("cuBLASLt GEMM [M={}, N={}, K={}]: status {}", M, N, K, static_cast<int>(status));
  }
  return Status::Ok();
}

Result<std::pair<int, float>> CublasGemm::tune(const void* x, int64_t M, int64_t K, const void* w, int64_t w_copies,
                                               size_t w_stride, int64_t N, void* y, int64_t ldy, DType act,
                                               DType y_dtype, cudaStream_t stream, int candidates) {
  if (candidates < 1 || candidates > kMaxCandidates)
    return make_error("cuBLASLt GEMM tuning: candidates must be 1..{} (found {})", kMaxCandidates, candidates);
  auto w_at = [&](int rep) { return static_cast<const char*>(w) + static_cast<size_t>(rep % w_copies) * w_stride; };
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  int best = -1;
  float best_ms = 0;
  for (int candidate = 0; candidate < candidates; ++candidate) {
    if (!plan_for(M, K, N, ldy, act, y_dtype, false, candidate).ok()) break;
    KILN_TRY(run(x, M, K, w, N, nullptr, y, ldy, act, y_dtype, stream));  // warm-up
    cudaEventRecord(start, stream);
    for (int rep = 0; rep < 10; ++rep) KILN_TRY(run(x, M, K, w_at(rep), N, nullptr, y, ldy, act, y_dtype, stream));
    cudaEventRecord(stop, stream);
    cudaEventSynchronize(stop);
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    ms /= 10;
    if (best < 0 || ms < best_ms) {
      best = candidate;
      best_ms = ms;
    }
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  if (best < 0) return make_error("cuBLASLt GEMM [M={}, N={}, K={}]: no algorithm to tune", M, N, K);
  auto pinned = plan_for(M, K, N, ldy, act, y_dtype, false, best);
  if (!pinned.ok()) return pinned.error();
  return std::make_pair(best, best_ms);
}

}  // namespace kiln::cuda
