// Host sampling of one logit row (semantics in sample_row.h): the same radix selection as the CUDA
// kernel (backend/cuda/sampling.cu), serially. Compiled with -ffp-contract=off (see CMakeLists.txt)
// so the float helpers of sample_row.h round exactly as on the device.
#include "backend/sample_row.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace kiln {

namespace {

// Lowest id among the largest non-NaN logits; 0 when every logit is NaN.
int32_t greedy_id(const float* logits, int64_t vocab) {
  int64_t best = -1;
  for (int64_t i = 0; i < vocab; ++i) {
    const float v = logits[i];
    if (!std::isnan(v) && (best < 0 || v > logits[best])) best = i;
  }
  return best < 0 ? 0 : static_cast<int32_t>(best);
}

struct Selection {
  uint32_t key;                 // the threshold v
  uint64_t weight_at_or_above;  // weight of the keys >= v
};

// Among keys >= lower: the largest key v such that the weight of keys >= v reaches the target, where
// target = target_of(total weight of keys >= lower) must lie in [1, total]. One byte of v per pass,
// from the top: a pass histograms the weight of the keys that share the bytes chosen so far, then
// walks the 256 bins downwards, adding the weight above, to the first bin where it reaches target.
// weight(key) = 1 gives the target-th largest key (top-k); key_mass gives the top-p threshold.
template <class Weight, class Target>
Selection radix_select(const std::vector<uint32_t>& keys, uint32_t lower, Weight weight, Target target_of) {
  uint32_t prefix = 0;
  uint64_t above = 0;  // weight of the keys >= lower above the prefix's range
  uint64_t target = 0;
  uint64_t hist[256];
  for (int shift = 24;; shift -= 8) {
    std::fill(hist, hist + 256, uint64_t{0});
    const uint32_t high_mask = shift == 24 ? 0u : ~0u << (shift + 8);
    for (const uint32_t key : keys) {
      if (key >= lower && (key & high_mask) == prefix) hist[(key >> shift) & 255u] += weight(key);
    }
    if (shift == 24) {
      uint64_t total = 0;
      for (const uint64_t h : hist) total += h;
      target = target_of(total);
    }
    int bin = 255;
    for (; bin > 0 && above + hist[bin] < target; --bin) above += hist[bin];
    prefix |= static_cast<uint32_t>(bin) << shift;
    if (shift == 0) return {prefix, above + hist[bin]};
  }
}

}  // namespace

int32_t sample_row(const float* logits, int64_t vocab, const RowSampling& s, SampleScratch& scratch) {
  namespace sp = sampling;
  if (vocab <= 0) return 0;
  const float inv_temperature = sp::inverse_temperature(s.temperature);
  float max_logit = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < vocab; ++i) max_logit = logits[i] > max_logit ? logits[i] : max_logit;  // skips NaN
  if (sp::is_greedy(s, inv_temperature) || !std::isfinite(max_logit)) return greedy_id(logits, vocab);

  std::vector<uint32_t>& keys = scratch.keys;
  keys.resize(static_cast<size_t>(vocab));
  for (int64_t i = 0; i < vocab; ++i) keys[i] = sp::prob_key(logits[i], max_logit, inv_temperature);

  uint32_t threshold = 0;
  if (s.top_k > 0 && s.top_k < vocab) {
    const uint64_t k = static_cast<uint64_t>(s.top_k);
    threshold = radix_select(
                    keys, 0, [](uint32_t) { return uint64_t{1}; }, [k](uint64_t) { return k; })
                    .key;
  }
  uint64_t kept_mass = 0;
  bool mass_known = false;
  if (s.top_p < 1.0f) {
    const float top_p = s.top_p;
    const Selection v =
        radix_select(keys, threshold, sp::key_mass, [top_p](uint64_t z) { return sp::top_p_need(top_p, z); });
    threshold = v.key;
    kept_mass = v.weight_at_or_above;
    mass_known = true;
  }
  if (s.min_p > 0.0f && sp::min_p_key(s.min_p) > threshold) {
    threshold = sp::min_p_key(s.min_p);
    mass_known = false;
  }
  if (!mass_known) {
    kept_mass = 0;
    for (const uint32_t key : keys) kept_mass += key >= threshold ? sp::key_mass(key) : 0;
  }

  const uint64_t target = sp::draw_target(s.uniform, kept_mass);
  uint64_t running = 0;
  int32_t last = 0;
  for (int64_t i = 0; i < vocab; ++i) {
    const uint64_t w = keys[i] >= threshold ? sp::key_mass(keys[i]) : 0;
    if (w == 0) continue;
    running += w;
    last = static_cast<int32_t>(i);
    if (running > target) return last;
  }
  return last;  // unreachable: target < kept_mass
}

}  // namespace kiln
