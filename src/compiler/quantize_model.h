// Weight quantization of a built graph (the build side's `--quant`): calibration on prompts, AWQ's
// activation-aware channel scaling, round-to-nearest quantization into kiln's layout family
// (common/quant.h), and mixed precision where a matrix quantizes badly.
//
//   int8      every Linear matrix int8 per output channel, symmetric (F32 scales).
//   int4      transformer matrices int4 in groups of `group_size` along K, asymmetric (F16 scale and
//             min); each matrix's input channels are first scaled by s = mean|x|^a (a searched on a
//             grid of 20 for the least output error on calibration activations; AWQ, Lin et al.
//             2023), and 1/s is folded into what produces that input (the RMSNorm weight before
//             qkv and gate_up, the up rows before down, the v rows before o_proj, tied across the
//             query heads of a KV head): the float model computes the same function, the quantized
//             one errs less where activations are large. The LM head is int8 per channel.
//   int4-rtn  the same layout without the search (s = 1), for comparison.
//   w8a8      int8 per-channel weights and int8 activations (per token, or static per matrix input with
//             a calibration method): SmoothQuant (Xiao et al. 2023) first moves activation outliers into
//             the weights, s = max|x|^alpha / max|w|^(1-alpha) with alpha searched per matrix (or none),
//             folded like AWQ's scales. The LM head stays int8 weight-only.
// A matrix whose relative output error on the calibration activations exceeds max_error stays in
// the engine's dtype; --keep-fp16 patterns force that. Every decision is reported.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "graph/graph.h"
#include "graph/weight_store.h"
#include "tokenizer/tokenizer.h"

namespace kiln {

struct QuantizeModelOptions {
  std::string mode;                    // int8 | int4 | int4-rtn
  int64_t group_size = 0;               // 0: int4 128, int8 one scale per output channel
  std::string calib_path;              // "" = the built-in prompts
  int64_t calib_samples = 32;
  int64_t calib_seq_len = 256;
  std::string calib_method;            // w8a8: "" = dynamic per-token activation scales; minmax | percentile |
                                       // entropy = one static scale per matrix input from calibration
  std::string calib_cache;             // "" = none; else read when it exists (and matches), written otherwise
  std::vector<std::string> keep;       // name substrings kept unquantized
  bool gptq = false;                   // GPTQ (compiler/gptq.h) instead of rounding each weight to nearest
  double max_error = -1;               // < 0: the mode's default; 0: never keep a matrix for its error
  const Tokenizer* tokenizer = nullptr;  // calibration prompts are tokenized with it (needed for int4)
  int threads = 0;
  bool progress = true;                // a progress line on stderr
};

struct QuantizeModelReport {
  std::string summary;                 // one line for `kiln build`
  std::vector<std::string> notes;      // one line per decision worth telling (kept matrices, AWQ ratios)
  nlohmann::json metadata;             // recorded in the engine under build.quant
};

// Calibration prompts: a text file (paragraphs separated by blank lines), JSONL (objects with
// "text" or "prompt", or strings), or the built-in set when path is empty.
Result<std::vector<std::string>> read_calibration_prompts(const std::string& path);

Result<QuantizeModelReport> quantize_model(Graph& graph, WeightStore& weights, const QuantizeModelOptions& options);

}  // namespace kiln
