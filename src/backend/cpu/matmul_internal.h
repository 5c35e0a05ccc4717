// Internal to backend/cpu: the f32 register tiles of matmul.cc, shared with matmul_quant.cc.
#pragma once

#include <cstdint>

namespace kiln::cpu {

// y[m, n] = x[m, :] · panel[n, :] (+ bias[n]) for m < M, n < rows: x [M, K] (stride K), panel
// [rows, K] f32 (stride K), bias [rows] or null, y [M, ldy] with the rows' outputs at columns 0..rows.
// AVX2 4x3 tiles when available, else the scalar loop. Single-threaded (callers split the rows).
void matmul_f32_panel(const float* x, int64_t M, int64_t K, const float* panel, int64_t rows, const float* bias,
                      float* y, int64_t ldy);

}  // namespace kiln::cpu
