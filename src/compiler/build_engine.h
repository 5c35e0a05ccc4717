// The build side end to end (TensorRT's builder): import a model (HF directory or llama2.c .bin),
// build its graph, run the passes (precision, fusion), and write one engine file with the
// tokenizer embedded.
#pragma once

#include <cstdint>
#include <string>

#include "common/error.h"

namespace kiln {

struct BuildOptions {
  std::string model_path;       // HF model directory or llama2.c .bin
  std::string output_path;
  std::string dtype = "auto";   // fp32 | fp16 | bf16 | auto (the checkpoint's own; llama2.c: fp32)
  std::string tokenizer_path;   // optional: overrides the one found beside the model
  int64_t max_seq_len = 0;      // 0: the model's max positions (capped at 4096)
  int64_t max_batch = 8;
  std::string backend = "cpu";
  bool fuse = true;             // QKV and gate/up fusion
};

struct BuildReport {
  int fused_qkv = 0;
  int fused_gate_up = 0;
  int fused_add_rms_norm = 0;
  int64_t num_tensors = 0;
  int64_t weight_bytes = 0;
  std::string tokenizer;  // what was embedded ("" when none)
};

Result<BuildReport> build_engine(const BuildOptions& options);

}  // namespace kiln
