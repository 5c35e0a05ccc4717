#include "runtime/sampler.h"

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

Sampler::Sampler(int64_t vocab_size, const SamplingParams& params)
    : vocab_size_(vocab_size), params_(params) {
  uint64_t s = params.seed;
  for (uint64_t& word : state_) word = splitmix64(s);
  seen_.assign(static_cast<size_t>(vocab_size), 0);
  scratch_.keys.reserve(static_cast<size_t>(vocab_size));
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

float Sampler::next_uniform() { return static_cast<float>(next_u64() >> 40) * 0x1.0p-24f; }

RowSampling Sampler::next_row() {
  return RowSampling{params_.temperature, params_.top_k, params_.top_p, params_.min_p, next_uniform()};
}

int32_t Sampler::sample(float* logits, std::span<const int32_t> history) {
  if (params_.repetition_penalty != 1.0f) {
    for (int32_t id : history) {
      if (id < 0 || id >= vocab_size_ || seen_[id]) continue;
      seen_[id] = 1;
      logits[id] =
          logits[id] > 0 ? logits[id] / params_.repetition_penalty : logits[id] * params_.repetition_penalty;
    }
    for (int32_t id : history) {
      if (id >= 0 && id < vocab_size_) seen_[id] = 0;
    }
  }
  return sample_row(logits, vocab_size_, next_row(), scratch_);
}

}  // namespace kiln
