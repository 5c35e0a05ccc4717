// Token sampling from one row of logits. Order as in HF's logits processors / vLLM's sampler:
// repetition penalty -> temperature -> top-k -> top-p -> min-p -> draw. temperature == 0 is greedy
// (argmax after the repetition penalty). After the penalty, the semantics are sample_row's
// (backend/sample_row.h), which Backend::forward_sample also follows on the device, so a request
// draws the same tokens whether its logits come to the host or not. The random stream is a seeded
// xoshiro256**, one uniform per token (greedy included), so the same seed gives the same tokens on
// every platform. Scratch is sized on first use: sampling then allocates nothing.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "backend/sample_row.h"

namespace kiln {

struct SamplingParams {
  float temperature = 1.0f;         // 0: greedy
  int32_t top_k = 0;                // 0: off
  float top_p = 1.0f;               // 1: off
  float min_p = 0.0f;               // 0: off; keeps tokens with p >= min_p * p_max
  float repetition_penalty = 1.0f;  // 1: off; CTRL-style: logit / p if > 0 else logit * p, for seen ids
  uint64_t seed = 0;
};

class Sampler {
 public:
  Sampler(int64_t vocab_size, const SamplingParams& params);

  // logits: [vocab] (modified in place); history: ids seen so far (prompt and output) for the penalty.
  int32_t sample(float* logits, std::span<const int32_t> history);
  // The next token's RowSampling for Backend::forward_sample: the parameters and the next uniform
  // (sample() draws the same way; a request may mix the two).
  RowSampling next_row();
  // The next draw in [0, 1): 24 random bits, k / 2^24.
  float next_uniform();

 private:
  uint64_t next_u64();

  int64_t vocab_size_;
  SamplingParams params_;
  uint64_t state_[4];
  SampleScratch scratch_;
  std::vector<uint8_t> seen_;  // [vocab] scratch for the penalty
};

}  // namespace kiln
