// The build side end to end (TensorRT's builder): import a model (HF directory or llama2.c .bin),
// build its graph, run the passes (precision, fusion), and write one engine file with the
// tokenizer embedded.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/error.h"

namespace kiln {

struct BuildOptions {
  std::string model_path;       // HF model directory or llama2.c .bin
  std::string output_path;
  std::string dtype = "auto";   // fp32 | fp16 | bf16 | auto (the checkpoint's own; llama2.c: fp32)
  std::string tokenizer_path;   // optional: overrides the one found beside the model
  std::string chat_template_path;  // optional: a Jinja chat template file; overrides the model's
  int64_t max_seq_len = 0;      // 0: the model's context (max_position_embeddings; cuda: at most 4096)
  int64_t max_batch = 8;
  std::string backend = "cpu";   // cpu | cuda
  std::string device_arch;      // cuda: "sm_90" etc.; empty = the GPU present at build time, else sm_90
  std::string profile;          // "batch=1:8:64,seq=1:512:4096" (min:opt:max); overrides max_batch/max_seq_len
  bool fuse = true;             // QKV, gate/up, add+RMSNorm, RoPE-into-attention and SwiGLU-into-down fusion
  bool tune = true;             // cuda: time kernel tactics on the GPU present (skipped without one)
  // Weight quantization (common/quant.h): none | int8 (per output channel, symmetric) | int4 (group-wise,
  // asymmetric, AWQ scales searched on calibration prompts) | int4-rtn (round to nearest, no search).
  std::string quant = "none";
  int64_t group_size = 0;                // elements of K per scale (32, 64, 128, ...; wider than K -> K); 0: int4 128,
                                         // int8 one per output channel
  std::string calib_path;                // calibration prompts: text (one per paragraph) or JSONL; "" = built-in
  int64_t calib_samples = 32;            // prompts used for calibration
  int64_t calib_seq_len = 256;           // tokens per calibration prompt (longer ones are cut)
  std::string calib_cache;               // calibration results: reused when the file exists and matches, else written
  std::string calib_method;              // w8a8 static activation scales: minmax | percentile | entropy ("" = dynamic)
  std::vector<std::string> keep_fp16;    // weights whose names contain one of these stay unquantized
  bool gptq = false;                     // quantize with GPTQ's error feedback on the calibration inputs
  std::string kv_cache = "auto";         // KV cache element type: auto (cpu: fp16 for fp16 / bf16 engines, fp32 for
                                         // fp32 ones; cuda: the activation dtype) | fp32 (f32) | fp16 (f16) | int8
  double max_quant_error = -1;           // keep a matrix unquantized above this relative output error on the
                                         // calibration prompts (< 0: the mode's default; 0: never, no calibration
                                         // for int8 / int4-rtn)
};

struct BuildReport {
  int fused_qkv = 0;
  int fused_gate_up = 0;
  int fused_add_rms_norm = 0;
  int fused_rope = 0;
  int fused_swiglu_linear = 0;
  int64_t num_tensors = 0;
  int64_t weight_bytes = 0;
  std::string tokenizer;  // what was embedded ("" when none)
  std::string chat_template;  // the file the embedded chat template came from ("" when none)
  std::string tactics;    // e.g. "40 timed on sm_90", or why none were
  std::string quant;      // e.g. "int4 g128 (AWQ, 32 calibration prompts): 35 of 36 matrices, 4.63 bits per weight"
  std::vector<std::string> quant_notes;  // per weight: kept unquantized and why, AWQ choices
  std::string kv_cache;   // the KV cache the engine asks for: "fp32", "fp16", "int8" or "activation dtype" (cuda)
  std::vector<std::string> warnings;  // allowed but worth a line (a max sequence length past the model's context)
};

// Shape profile of an engine (TensorRT's optimization profile): the run side plans memory for the
// max shapes; tactics are chosen at the opt shapes.
struct ShapeProfile {
  int64_t min_batch = 1, opt_batch = 1, max_batch = 8;
  int64_t min_seq = 1, opt_seq = 512, max_seq = 2048;
};
Result<ShapeProfile> parse_profile(const std::string& text);

Result<BuildReport> build_engine(const BuildOptions& options);

}  // namespace kiln
