// Internal to backend/cpu: what matmul_quant.cc shares with its AVX-512 kernels (matmul_quant_avx512.cc).
#pragma once

#include <cstdint>
#include <vector>

#include "common/quant.h"

namespace kiln::cpu {

// Decode (M <= kStreamMaxRows), weight-only: the activation side, prepared once per call on the calling
// thread and read by every worker. Rows [n0, n1) of y per worker call (y, bias indexed by absolute n).
struct QuantArgs {
  const float* x;     // [M, ldx]: the activations in the order the kernel reads them, zero past K
  int64_t ldx;
  int64_t M, K;
  const float* xsum;  // [M, groups]: Σ x over each group (null without mins)
  QuantMatrixView w;
  int64_t groups;
  int64_t row_bytes;
  const float* bias;  // [N] or null
  float* y;           // [M, ldy]
  int64_t ldy;
};

// W8A8 (act_bits == 8): activation rows rounded to int8, zero padded to Kp.
struct W8A8Args {
  const int8_t* xq;     // [M, Kp]
  const float* xscale;  // [M]
  int64_t M, Kp;
  QuantMatrixView w;
  int64_t row_bytes;
  const float* bias;
  float* y;
  int64_t ldy;
};

// ---- AVX-512 (matmul_quant_avx512.cc; call only when using_avx512()) ----

// Whether the AVX-512 decode kernels take this layout: int8 with groups of 16 or any multiple of 16
// (and per channel); int4 with groups of 32 or 64, a multiple of 128, or one group per row.
bool quant_decode_avx512_supports(const QuantInfo& q, int64_t K);
// The row stride of the activations quant_rows_avx512 reads, and the copy that produces them from
// x [M, K] (int4: each 128 elements reordered to match the kernel's nibble order; zero padded).
int64_t quant_x_stride_avx512(int bits, int64_t K);
void prepare_quant_x_avx512(int bits, const float* x, int64_t M, int64_t K, float* xp);
void quant_rows_avx512(const QuantArgs& a, int64_t n0, int64_t n1);

// ---- Opt-in integer decode of int4 weights (matmul_quant_vnni.cc): int8 activations per 32 ----

// On when KILN_CPU_QUANT_ACT=int8 (read once) or set_quant_int8_activations(true); off by default.
bool quant_int8_activations();
void set_quant_int8_activations(bool on);  // tests, benchmarks
void reset_quant_int8_activations();       // back to the environment's choice
// Whether this CPU and layout take it: avx512 level with VNNI, weight-only int4 with groups of 32, 64,
// a multiple of 128, or one group per row.
bool quant_dot_supports(const QuantInfo& q, int64_t K);

// The activation side, prepared once per call: per x row and 128-code chunk, the int8 codes of its 4
// blocks' first halves (64 bytes), of their second halves (64 bytes), and the block scales spread
// over the chunk's 16 int32 lanes (lanes 4b .. 4b + 3: block b).
struct QuantDotX {
  const int8_t* q;   // [M, ldq]
  const float* dx;   // [M, ldd]
  int64_t ldq, ldd;
};
struct QuantDotBuffers {
  std::vector<int8_t> q;
  std::vector<float> dx;
};
void prepare_quant_dot_x(const float* x, int64_t M, int64_t K, QuantDotBuffers& buf, QuantDotX& out);
// Rows [n0, n1) of y; a.xsum as for the f32 kernels (a.x is not read).
void quant_dot_rows(const QuantArgs& a, const QuantDotX& d, int64_t n0, int64_t n1);

}  // namespace kiln::cpu
