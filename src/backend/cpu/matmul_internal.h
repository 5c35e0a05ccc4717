// Internal to backend/cpu: the f32 register tiles of matmul.cc and matmul_avx512.cc, shared with
// matmul_quant.cc.
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace kiln::cpu {

// matmul with M <= kStreamMaxRows streams the weights once (decode); larger M runs prefill tiles.
constexpr int64_t kStreamMaxRows = 8;

// y[m, n] = x[m, :] · panel[n, :] (+ bias[n]) for m < M, n < rows: x [M, K] (stride K), panel
// [rows, K] f32 (stride K), bias [rows] or null, y [M, ldy] with the rows' outputs at columns 0..rows.
// AVX-512 packed panels, AVX2 4x3 tiles or the scalar loop, by active_isa(). Single-threaded (callers split the rows).
void matmul_f32_panel(const float* x, int64_t M, int64_t K, const float* panel, int64_t rows, const float* bias,
                      float* y, int64_t ldy);


// AVX-512 (matmul_avx512.cc; call only when using_avx512()): rows [n0, n1) of matmul's product,
// y[m, n] for n0 <= n < n1 (y, bias indexed by absolute n).
void matmul_rows_avx512(const float* x, int64_t M, int64_t K, const void* w, DType w_dtype, const float* bias,
                        float* y, int64_t ldy, int64_t n0, int64_t n1);
// matmul_f32_panel's AVX-512 path.
void matmul_f32_panel_avx512(const float* x, int64_t M, int64_t K, const float* panel, int64_t rows, const float* bias,
                             float* y, int64_t ldy);
// The same with a BF16 panel [rows, K] (stride K) on a CPU with AVX512_BF16 (call only when
// cpu_features().avx512_bf16): x rounded to BF16, VDPBF16PS products, f32 sums, as a BF16 matrix's prefill.
void matmul_bf16_panel_avx512(const float* x, int64_t M, int64_t K, const uint16_t* panel, int64_t rows,
                              const float* bias, float* y, int64_t ldy);
// dst[i] = bf16(src[i]), round to nearest even (AVX512_BF16's VCVTNEPS2BF16; same precondition).
void f32_to_bf16_avx512(const float* src, int64_t n, uint16_t* dst);

}  // namespace kiln::cpu
