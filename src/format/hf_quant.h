// Pre-quantized Hugging Face checkpoints: config.json's `quantization_config` and the packed tensors
// it implies, unpacked into kiln's one quantized layout (common/quant.h) or dequantized to float.
//
//   awq  (AutoAWQ GEMM)  <module>.qweight int32 [K, N/8]    8 nibbles of columns [0 2 4 6 1 3 5 7] per word
//                        <module>.qzeros  int32 [K/G, N/8]  same packing
//                        <module>.scales  f16   [K/G, N]    W[k, n] = (q - z) * s
//   gptq (AutoGPTQ)      <module>.qweight int32 [K/8, N]    8 consecutive k per word, low nibble first
//                        <module>.qzeros  int32 [ceil(K/G), N/8]  packed along N, low nibble first, holding
//                                         zero - 1 (checkpoint_format "gptq", v1) or zero ("gptq_v2")
//                        <module>.scales  f16   [ceil(K/G), N]
//                        <module>.g_idx   int32 [K]         group of each input channel (optional when k / G)
//                        W[k, n] = (q - z[g_idx[k]]) * s[g_idx[k]]
//   fp8                  <module>.weight  F8_E4M3 [N, K] with <module>.weight_scale_inv f32
//                        [ceil(N/bn), ceil(K/bk)] (weight_block_size [bn, bk]) or <module>.weight_scale
//                        (one value, per tensor): W = w * scale
//   compressed-tensors   format "float-quantized": <module>.weight F8_E4M3 [N, K], <module>.weight_scale
//                        [1] (tensor), [N, 1] (channel) or [ceil(N/bn), ceil(K/bk)] (block)
//
// AWQ and GPTQ map exactly onto int4 with F32 scale s and min -s * z (s is an f16, z an integer up to
// 16: both products are exact in f32). A GPTQ matrix whose g_idx is not k / G (desc_act: groups
// interleaved along K) has no exact contiguous-group form; it is dequantized (exactly, in f32) and
// re-quantized to int8, group 32, F32 scale and min (error <= range / 510 per group). FP8 weights are
// dequantized to F32 (exact for f16/bf16 scales, one rounding for f32 scales) and take the engine's
// --dtype. Errors name config.json's field or the tensor, expected vs found.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/quant.h"
#include "format/tensor_view.h"

namespace kiln {

enum class HfQuantMethod { Awq, Gptq, Fp8, CompressedTensorsFp8 };

struct HfQuantConfig {
  HfQuantMethod method = HfQuantMethod::Awq;
  std::string quant_method;      // as config.json spells it ("awq", "gptq", "fp8", "compressed-tensors")
  int bits = 0;                  // awq / gptq: 4; fp8: 8
  int64_t group_size = 0;        // awq / gptq: elements of K per group; -1 = one group per row
  bool desc_act = false;         // gptq
  bool sym = true;               // gptq (informative: qzeros are what is read)
  int zero_offset = 0;           // gptq: stored zero = zero - zero_offset (v1 format: 1, gptq_v2: 0)
  std::string fp8_strategy;      // fp8: "tensor", "channel" or "block"
  std::vector<int64_t> fp8_block;  // block: [rows of N, columns of K]
  std::string description;       // one line for the build report and the engine metadata
};

// config.json's quantization_config, validated; nullopt when there is none. `origin` names the file
// in errors ("DIR/config.json").
Result<std::optional<HfQuantConfig>> parse_hf_quant_config(const std::string& config_json_text,
                                                          const std::string& origin);
Result<std::optional<HfQuantConfig>> read_hf_quant_config(const std::string& model_dir);

struct HfQuantWeights {
  // "<module>.weight" -> kiln layout [N, K] (awq, gptq): the graph builder declares these quantized.
  std::map<std::string, QuantizedMatrix> quantized;
  // "<module>.weight" -> owned F32 [N, K] views (fp8): these replace the checkpoint tensor of that name.
  std::map<std::string, TensorView> dequantized;
  // Checkpoint tensors read here (qweight, qzeros, scales, g_idx, weight_scale, input_scale, ...):
  // the caller drops them from the float tensors it builds from.
  std::vector<std::string> consumed;
  std::vector<std::string> notes;  // e.g. which matrices were re-quantized and why
  int64_t requantized = 0;         // gptq matrices with an interleaved g_idx
};

// Unpacks every quantized Linear the config implies from `tensors` (HF names). Each module is found
// by its packed tensors (<module>.qweight for awq / gptq, an F8_E4M3 <module>.weight for fp8).
Result<HfQuantWeights> unpack_hf_quantized(const HfQuantConfig& config, const std::map<std::string, TensorView>& tensors);

// One matrix each (what unpack_hf_quantized runs per module; `module` names it in errors).
Result<QuantizedMatrix> unpack_awq_gemm(const std::string& module, const TensorView& qweight, const TensorView& qzeros,
                                        const TensorView& scales, int64_t group_size);
// What unpack_gptq did with an interleaved g_idx (act order): re-quantized, and how far from the
// checkpoint's own dequantized values (max |error| and the largest |weight|, both in weight units).
struct GptqRequantization {
  bool requantized = false;
  double max_error = 0, max_abs = 0;
};
// `g_idx` may be null (groups k / G).
Result<QuantizedMatrix> unpack_gptq(const std::string& module, const TensorView& qweight, const TensorView& qzeros,
                                    const TensorView& scales, const TensorView* g_idx, int64_t group_size,
                                    int zero_offset, GptqRequantization* requant);
// W[N, K] = e4m3(weight) * scale; strategy "tensor": scale [1] or []; "channel": [N, 1]; "block":
// [ceil(N / block[0]), ceil(K / block[1])].
Result<std::vector<float>> dequantize_fp8(const std::string& module, const TensorView& weight, const TensorView& scale,
                                          const std::string& strategy, const std::vector<int64_t>& block);

// The value of a float8 e4m3fn byte (NaN for 0x7f / 0xff).
float f8e4m3_to_f32(uint8_t bits);

}  // namespace kiln
