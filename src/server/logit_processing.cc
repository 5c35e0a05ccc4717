#include "server/logit_processing.h"

#include <algorithm>
#include <cmath>

namespace kiln {

void apply_presence_frequency_penalties(float* logits, std::span<const int32_t> output_ids, float presence,
                                        float frequency, std::vector<uint8_t>& seen) {
  if (presence == 0.0f && frequency == 0.0f) return;
  for (int32_t id : output_ids) {
    logits[id] -= frequency;
    if (!seen[id]) {
      seen[id] = 1;
      logits[id] -= presence;
    }
  }
  for (int32_t id : output_ids) seen[id] = 0;
}

void apply_logit_bias(float* logits, std::span<const std::pair<int32_t, float>> bias) {
  for (const auto& [id, b] : bias) logits[id] += b;
}

double top_logprobs(const float* logits, int64_t vocab, int k, std::vector<std::pair<int32_t, float>>& top) {
  // log Z in float64 over the max-shifted row (stable for large logits).
  const float max_logit = *std::max_element(logits, logits + vocab);
  double sum = 0.0;
  for (int64_t i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(logits[i]) - max_logit);
  const double log_z = max_logit + std::log(sum);
  // Top k by one scan, keeping `top` sorted (k <= 20, so insertion beats a vocab-sized sort).
  top.clear();
  auto better = [](const std::pair<int32_t, float>& a, const std::pair<int32_t, float>& b) {
    return a.second > b.second || (a.second == b.second && a.first < b.first);
  };
  for (int64_t i = 0; i < vocab && k > 0; ++i) {
    const std::pair<int32_t, float> candidate{static_cast<int32_t>(i), logits[i]};
    if (static_cast<int>(top.size()) == k && !better(candidate, top.back())) continue;
    if (static_cast<int>(top.size()) == k) top.pop_back();
    top.insert(std::upper_bound(top.begin(), top.end(), candidate, better), candidate);
  }
  for (auto& entry : top) entry.second = static_cast<float>(entry.second - log_z);
  return log_z;
}

}  // namespace kiln
