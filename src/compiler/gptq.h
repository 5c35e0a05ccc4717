// GPTQ for kiln's quantized layouts (common/quant.h): Frantar, Ashkboos, Hoefler, Alistarh 2022, "GPTQ:
// Accurate Post-Training Quantization for Generative Pre-trained Transformers".
//
// Round to nearest quantizes every weight on its own. GPTQ quantizes the columns of W [N, K] one at a
// time and moves each column's rounding error onto the columns not yet quantized, weighted so that the
// layer's output error on the calibration inputs X [M, K], ||X W^T - X Q^T||^2, is what is minimized
// (the optimal-brain-surgeon update with H = X^T X): with U the upper Cholesky factor of H^-1,
//   e = (w_j - q_j) / U_jj,   w_i -= e * U_ji   for every i after j.
// Rows are independent given U, so they run in parallel.
//
// Layout rules: a group's scale and min are fixed when quantization reaches the group's first column,
// from the group's values at that moment (already carrying the error of earlier groups), optionally
// with the range clipped as the int4 search does (quantize_group_clipped, importance = diag H). With
// one group per row (int8 per channel) the columns go in order of decreasing H_kk (GPTQ's "act order":
// the columns whose errors cost most are quantized while the most columns remain to absorb them);
// with several groups the order is natural, so each group's columns stay together.
// H is damped: H_kk += damp * mean(diag H) (GPTQ's 1%); columns no input reaches (H_kk = 0) get
// H_kk = 1 and no coupling, i.e. round to nearest.
#pragma once

#include <cstdint>
#include <vector>

#include "backend/cpu/thread_pool.h"
#include "common/error.h"
#include "common/quant.h"

namespace kiln {

struct GptqOptions {
  double damp = 0.01;      // fraction of mean(diag H) added to the diagonal
  bool act_order = true;   // one group per row: columns by decreasing H_kk
  bool clip = false;       // group ranges clipped for the least diag-H-weighted error
};

// w: [N, K] row-major; x: [M, K] the inputs the matrix sees (M may be smaller than K: the damping keeps
// H invertible). Fails only when H is not positive definite after damping (non-finite inputs).
Result<QuantizedMatrix> quantize_gptq(const float* w, int64_t N, int64_t K, const QuantInfo& info, const float* x,
                                      int64_t M, cpu::ThreadPool& pool, const GptqOptions& options = {});

// Sets group (n, g)'s range to [lo, hi] of row[k0, k1) shrunk toward zero by the c in 1, 0.975, ... 0.7
// that minimizes sum_k importance[k] (row[k] - dequantized)^2, and writes its codes (quantize_group).
void quantize_group_clipped(QuantizedMatrix& m, int64_t n, int64_t g, const float* row,
                            const std::vector<double>& importance);

}  // namespace kiln
