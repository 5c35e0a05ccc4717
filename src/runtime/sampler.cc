#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>

namespace kiln {

namespace {
uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
}  // namespace

Sampler::Sampler(int64_t vocab_size, const SamplingParams& params) : vocab_size_(vocab_size), params_(params) {
  uint64_t s = params.seed;
  for (uint64_t& word : state_) word = splitmix64(s);
  candidates_.reserve(static_cast<size_t>(vocab_size));
  seen_.assign(static_cast<size_t>(vocab_size), 0);
}

uint64_t Sampler::next_u64() {  // xoshiro256** (Blackman & Vigna)
  const uint64_t result = rotl(state_[1] * 5, 7) * 9;
  const uint64_t t = state_[1] << 17;
  state_[2] ^= state_[0];
  state_[3] ^= state_[1];
  state_[1] ^= state_[2];
  state_[0] ^= state_[3];
  state_[2] ^= t;
  state_[3] = rotl(state_[3], 45);
  return result;
}

double Sampler::next_unit() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }

int32_t Sampler::sample(float* logits, std::span<const int32_t> history) {
  if (params_.repetition_penalty != 1.0f) {
    for (int32_t id : history) {
      if (id < 0 || id >= vocab_size_ || seen_[id]) continue;
      seen_[id] = 1;
      logits[id] = logits[id] > 0 ? logits[id] / params_.repetition_penalty : logits[id] * params_.repetition_penalty;
    }
    for (int32_t id : history) {
      if (id >= 0 && id < vocab_size_) seen_[id] = 0;
    }
  }
  if (params_.temperature <= 0.0f) {
    return static_cast<int32_t>(std::max_element(logits, logits + vocab_size_) - logits);
  }
  candidates_.clear();
  for (int64_t i = 0; i < vocab_size_; ++i) candidates_.emplace_back(logits[i] / params_.temperature, static_cast<int32_t>(i));
  auto by_logit_desc = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  size_t n = candidates_.size();
  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < n) {
    std::nth_element(candidates_.begin(), candidates_.begin() + params_.top_k, candidates_.end(), by_logit_desc);
    n = static_cast<size_t>(params_.top_k);
  }
  const bool need_sorted = params_.top_p < 1.0f;
  if (need_sorted) std::sort(candidates_.begin(), candidates_.begin() + n, by_logit_desc);
  // Softmax over the n candidates (f64 sums for stable top-p boundaries).
  float max_logit = candidates_[0].first;
  for (size_t i = 1; i < n; ++i) max_logit = std::max(max_logit, candidates_[i].first);
  double total = 0.0;
  for (size_t i = 0; i < n; ++i) {
    candidates_[i].first = std::exp(candidates_[i].first - max_logit);
    total += candidates_[i].first;
  }
  if (need_sorted) {  // smallest prefix whose mass reaches top_p (at least one token)
    double mass = 0.0;
    size_t keep = 0;
    while (keep < n) {
      mass += candidates_[keep].first / total;
      ++keep;
      if (mass >= params_.top_p) break;
    }
    n = keep;
  }
  if (params_.min_p > 0.0f) {  // the max probability is exp(0) / total: threshold relative to it
    size_t kept = 0;
    for (size_t i = 0; i < n; ++i) {
      if (candidates_[i].first >= params_.min_p) candidates_[kept++] = candidates_[i];
    }
    n = kept;
  }
  double kept_total = 0.0;
  for (size_t i = 0; i < n; ++i) kept_total += candidates_[i].first;
  double r = next_unit() * kept_total;
  for (size_t i = 0; i < n; ++i) {
    r -= candidates_[i].first;
    if (r < 0) return candidates_[i].second;
  }
  return candidates_[n - 1].second;
}

}  // namespace kiln
