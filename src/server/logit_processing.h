// Host-side work on one row of logits for the OpenAI parameters the Sampler does not know:
// presence/frequency penalties and logit_bias (applied before sampling), and log-probabilities of
// the model's distribution (taken before any of them, as vLLM reports raw logprobs).
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

namespace kiln {

// OpenAI's penalties (https://platform.openai.com/docs/advanced-usage, "frequency and presence
// penalties"): logit[j] -= c[j] * frequency + (c[j] > 0) * presence, where c[j] counts the times
// token j was generated (the prompt does not count). seen: [vocab] scratch of zeros, left zeroed.
void apply_presence_frequency_penalties(float* logits, std::span<const int32_t> output_ids, float presence,
                                        float frequency, std::vector<uint8_t>& seen);

// logit[id] += bias for each entry (ids are checked against the vocabulary by the caller).
void apply_logit_bias(float* logits, std::span<const std::pair<int32_t, float>> bias);

// log Z = log sum_i exp(logits[i]), and the k most likely ids with their log-probabilities
// (logit - log Z), most likely first (lower id first on ties); top is cleared, then filled.
double top_logprobs(const float* logits, int64_t vocab, int k, std::vector<std::pair<int32_t, float>>& top);

}  // namespace kiln
