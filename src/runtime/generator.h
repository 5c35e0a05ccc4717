// Single-sequence generation on top of the batch API: chunked prefill of the prompt, then one
// decode token per step, sampling, stop conditions (EOS, stop strings, max tokens, context end) and
// UTF-8-safe streaming of the text. The server's scheduler (continuous batching) will drive the
// same Backend::forward with many sequences per step.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"
#include "runtime/model.h"
#include "runtime/sampler.h"

namespace kiln {

struct GenerationRequest {
  std::vector<int32_t> prompt_ids;
  int32_t max_new_tokens = 128;
  SamplingParams sampling;
  std::vector<std::string> stop_strings;
  bool ignore_eos = false;
  bool want_last_logits = false;  // logits at the last prompt position, before any sampling
};

struct GenerationStats {
  int64_t prompt_tokens = 0;
  int64_t generated_tokens = 0;
  double prompt_seconds = 0;  // prefill only
  double ttft_seconds = 0;    // request start to first token sampled
  double decode_seconds = 0;  // after the first token
};

struct GenerationResult {
  std::vector<int32_t> ids;        // generated ids (a stop string's tokens included, EOS excluded)
  std::string text;                // decoded text, cut before a stop string
  std::string finish_reason;       // "length", "eos", "stop" or "context" (max sequence length reached)
  std::vector<float> last_logits;  // [vocab] when requested
  GenerationStats stats;
};

using TextCallback = std::function<void(std::string_view)>;

Result<GenerationResult> generate(Model& model, const GenerationRequest& request, const TextCallback& on_text = {});

}  // namespace kiln
