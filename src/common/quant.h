// Quantized matrices: the one family of integer weight layouts kiln runs, on every backend.
//
// A quantized matrix W[N, K] (a Linear weight: N outputs, K inputs) stores integer codes in groups
// of `group_size` consecutive elements along K; each (row, group) has a scale and, optionally, a min:
//
//     W[n, k] = scale[n, g] * q[n, k] + min[n, g]        g = k / group_size
//
//   bits 8: q is a signed byte (-128..127);
//   bits 4: q is unsigned (0..15), two codes per byte; int4 always has a min (a symmetric int4
//           format stores min = -8 * scale).
//
// Physical layout. K is padded to Kp = a multiple of 32 (kQuantBlock). Every row is Kp / 32 blocks:
//   int8 block: 32 bytes, element i at byte i                              row bytes = Kp
//   int4 block: 16 bytes, element i (0..15) in the low nibble of byte i,  row bytes = Kp / 2
//               element i + 16 in its high nibble (GGUF's Q4_0 / Q4_1 order: one 16-byte load,
//               one mask and one shift give both halves in order)
// Padding codes are 0 and padding never contributes: kernels treat activations past K as zeros.
// group_size is a multiple of 16 (bits 8) or 32 (bits 4), or >= K (one group per row: per channel);
// groups = ceil(K / group_size), the last one may be partial. Scales and mins are [N, groups], row-major, F16 or F32.
//
// How other formats map onto it (lossless unless stated):
//   GGUF Q8_0            bits 8, group 32, F16 scale, no min
//   GGUF Q4_0            bits 4, group 32, F16 scale d, min -8d
//   GGUF Q4_1            bits 4, group 32, F16 scale d, min m
//   GGUF Q5_0/Q5_1       bits 8, group 32 (5-bit codes in bytes), F16
//   GGUF Q4_K / Q5_K     bits 4 / 8, group 32, F32 (d * sub-scale and -dmin * sub-min are exact in F32)
//   GGUF Q6_K            bits 8, group 16, F32
//   AWQ / GPTQ int4      bits 4, their group, scale s, min -s * zero (F32 keeps it exact)
//   ONNX MatMulNBits 4   bits 4, block_size, scale s, min -s * zero_point (default zero point 8)
//
// Engine tensors of a quantized weight NAME: NAME holds the codes (I8 [N, Kp] or U8 [N, Kp / 2]),
// NAME.scales [N, groups], NAME.mins [N, groups] when has_min. The graph declares NAME with its
// logical shape [N, K] and a QuantInfo (graph/graph.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/error.h"

namespace kiln {

inline constexpr int64_t kQuantBlock = 32;

struct QuantInfo {
  int bits = 0;                    // 8 or 4
  int64_t group_size = 0;          // elements of K per scale
  DType scale_dtype = DType::F16;  // F16 or F32, scales and mins alike
  bool has_min = false;
  // Activation quantization of the matmul reading this weight (W8A8): 0 = none (weight-only: the
  // activations stay float); 8 = each activation row is rounded to int8 before an integer dot product
  // with the int8 codes (bits 8, one group per row, no min), scale act_scale when > 0 (static, from
  // calibration) or max|row| / 127 per row (dynamic, per token) when 0.
  int act_bits = 0;
  float act_scale = 0.0f;

  bool operator==(const QuantInfo&) const = default;
};

inline int64_t quant_padded_k(int64_t K) { return (K + kQuantBlock - 1) / kQuantBlock * kQuantBlock; }
inline int64_t quant_row_bytes(const QuantInfo& q, int64_t K) {
  return q.bits == 4 ? quant_padded_k(K) / 2 : quant_padded_k(K);
}
inline int64_t quant_groups(const QuantInfo& q, int64_t K) { return (K + q.group_size - 1) / q.group_size; }
inline DType quant_code_dtype(const QuantInfo& q) { return q.bits == 4 ? DType::U8 : DType::I8; }
// Bits per weight, scales and mins included (K a multiple of the group size).
double quant_bits_per_weight(const QuantInfo& q, int64_t K);
// e.g. "int4 g128 f16 +min", "int8 per-channel f32", "int8 per-channel f32 a8 per-token"
std::string quant_describe(const QuantInfo& q, int64_t K);

// The engine / weight-store names of a quantized weight's parts.
inline std::string quant_scales_name(const std::string& name) { return name + ".scales"; }
inline std::string quant_mins_name(const std::string& name) { return name + ".mins"; }

// Checks bits, group size, scale dtype and min for a [N, K] matrix; the message names `what`.
Status validate_quant(const QuantInfo& q, int64_t N, int64_t K, const std::string& what);

// A quantized matrix in memory (views; nothing owned): what kernels take.
struct QuantMatrixView {
  QuantInfo info;
  int64_t rows = 0;  // N
  int64_t cols = 0;  // K
  const uint8_t* codes = nullptr;  // [N, quant_row_bytes]
  const void* scales = nullptr;    // [N, groups] of info.scale_dtype
  const void* mins = nullptr;      // [N, groups] or null (!has_min)
};

// Code of element (n, k), as the integer it stands for (int8: -128..127, int4: 0..15).
int quant_code(const QuantMatrixView& w, int64_t n, int64_t k);
float quant_scale(const QuantMatrixView& w, int64_t n, int64_t g);
float quant_min(const QuantMatrixView& w, int64_t n, int64_t g);  // 0 without mins
// Row n dequantized into out[K] (the scalar reference every kernel is tested against).
void dequantize_row(const QuantMatrixView& w, int64_t n, float* out);

// The activation rounding of W8A8 (QuantInfo::act_bits = 8), the definition every kernel follows:
// scale = act_scale if > 0 else max|x| / 127 (0 for an all-zero row); q[k] = clamp(round_half_even(
// x[k] * (1 / scale)), -127, 127) (0 when scale is 0). Writes q[0, K) and returns the scale.
float quantize_activation_row(const float* x, int64_t K, float act_scale, int8_t* q);

// An owned quantized matrix, as the build side produces it.
struct QuantizedMatrix {
  QuantInfo info;
  int64_t rows = 0, cols = 0;
  std::vector<uint8_t> codes;   // [N, row_bytes]
  std::vector<uint8_t> scales;  // [N, groups] of info.scale_dtype, raw bytes
  std::vector<uint8_t> mins;    // same, empty without mins
  QuantMatrixView view() const {
    return QuantMatrixView{info, rows, cols, codes.data(), scales.data(), info.has_min ? mins.data() : nullptr};
  }
};

// Round-to-nearest quantization of a float matrix w[N, K] (row-major):
//   bits 8, no min: symmetric, scale = max|w| / 127 per group, q = round(w / scale) in [-127, 127];
//   bits 4 (or bits 8 with has_min): asymmetric, min = the group's minimum, scale = range / (2^bits - 1),
//   q = round((w - min) / scale) (int8 codes offset by -128 so they stay signed).
// Scales and mins are rounded to scale_dtype first and the codes computed with the rounded values.
// A constant group gets scale 0 and its value as min (asymmetric), or scale = |value| / 127.
QuantizedMatrix quantize_rtn(const float* w, int64_t N, int64_t K, const QuantInfo& info);

// The smallest and largest of row[k0, k1).
void value_range(const float* row, int64_t k0, int64_t k1, float& lo, float& hi);

// An empty (all-zero) quantized matrix of the right sizes.
QuantizedMatrix make_quantized_matrix(int64_t N, int64_t K, const QuantInfo& info);
// Sets (n, g)'s scale and min for the range [lo, hi] (lo <= 0 <= hi not required; symmetric formats
// use max(|lo|, |hi|)) and writes that group's codes by rounding row[k] (row = the whole row n,
// K floats; values outside the range clamp). Used by quantize_rtn and by searches that clip ranges.
void quantize_group(QuantizedMatrix& m, int64_t n, int64_t g, const float* row, float lo, float hi);
// Sets the code of element (n, k) to quantize_group's rounding of w against the scale and min already
// stored for its group, and returns the value that code dequantizes to (dequantize_row's). GPTQ
// quantizes column by column with it, after quantize_group fixed each group's range.
float quantize_element(QuantizedMatrix& m, int64_t n, int64_t k, float w);

}  // namespace kiln
