// sample_row (backend/sample_row.h) against an independent sort-based reference written from the
// header's definitions, on random rows (ties, -inf, NaN, tiny and huge temperatures, every feature
// alone and combined); its exp against std::exp; and a chi-square check that many uniforms draw the
// renormalized kept distribution (computed in double from the logits, not from sample_row's masses).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/sample_row.h"

namespace kiln {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

float ulp_of(double v) {  // spacing of floats at |v|
  const float f = static_cast<float>(std::fabs(v));
  return std::nextafter(f, kInf) - f;
}

TEST(SampleRowExp, WithinTwoUlpOfStdExp) {
  std::mt19937 rng(1);
  std::vector<float> xs{0.0f,  -0.0f, -1e-30f, -1e-8f, -1e-4f, -0.34657359f,
                        -0.5f, -1.0f, -10.0f,  -85.9f, -86.0f};
  std::uniform_real_distribution<float> wide(-86.0f, 0.0f), narrow(-2.0f, 0.0f);
  for (int i = 0; i < 200000; ++i) xs.push_back(i % 2 ? wide(rng) : narrow(rng));
  double worst = 0;
  for (const float x : xs) {
    const double want = std::exp(static_cast<double>(x));
    const float got = sampling::exp_nonpositive(x);
    worst = std::max(worst, std::fabs(got - want) / ulp_of(want));
  }
  EXPECT_LE(worst, 2.0);
  EXPECT_EQ(sampling::exp_nonpositive(0.0f), 1.0f);  // the most likely token has p = 1 exactly
  EXPECT_EQ(sampling::exp_nonpositive(-86.01f), 0.0f);
  EXPECT_EQ(sampling::exp_nonpositive(-kInf), 0.0f);
  EXPECT_EQ(sampling::exp_nonpositive(kNaN), 0.0f);
}

// ---- the reference: sorts, then applies each definition of sample_row.h literally

bool reference_greedy(const std::vector<float>& l, const RowSampling& s, int32_t& id) {
  float m = -kInf;
  bool any = false;
  for (float v : l) {
    if (!std::isnan(v) && (!any || v > m)) m = v, any = true;
  }
  const bool greedy = !(s.temperature > 0) || s.top_k == 1 ||
                      !std::isfinite(static_cast<float>(1.0f / s.temperature)) || !any || !std::isfinite(m);
  if (!greedy) return false;
  id = 0;
  for (size_t i = 0; i < l.size(); ++i) {
    if (any && l[i] == m) {
      id = static_cast<int32_t>(i);
      break;
    }
  }
  return true;
}

struct Reference {
  int32_t id = 0;
  std::vector<bool> kept;  // with positive mass
  std::vector<float> p;
};

Reference reference_sample(const std::vector<float>& l, const RowSampling& s) {
  Reference ref;
  if (reference_greedy(l, s, ref.id)) return ref;
  const size_t n = l.size();
  float m = -kInf;
  for (float v : l) m = std::isnan(v) ? m : std::max(m, v);
  const float inv_t = 1.0f / s.temperature;
  ref.p.resize(n);
  std::vector<uint64_t> w(n);
  for (size_t i = 0; i < n; ++i) {
    // The shared primitive (tested above against std::exp); everything after it is independent.
    ref.p[i] = sampling::exp_nonpositive((l[i] - m) * inv_t);
    w[i] = static_cast<uint64_t>(std::ldexp(static_cast<double>(ref.p[i]), 40));
  }
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return ref.p[a] > ref.p[b]; });
  float threshold = 0;
  if (s.top_k > 0 && static_cast<size_t>(s.top_k) < n) threshold = ref.p[order[s.top_k - 1]];
  if (s.top_p < 1.0f) {
    uint64_t z = 0;
    for (size_t i = 0; i < n; ++i) z += ref.p[i] >= threshold ? w[i] : 0;
    double need_d = std::ceil(static_cast<double>(std::max(s.top_p, 0.0f)) * static_cast<double>(z));
    uint64_t need = static_cast<uint64_t>(std::clamp(need_d, 1.0, static_cast<double>(z)));
    need = std::min(need, z);
    uint64_t cum = 0;
    for (size_t j = 0; j < n; ++j) {
      if (ref.p[order[j]] < threshold) break;
      cum += w[order[j]];
      if (cum >= need) {
        threshold = ref.p[order[j]];
        break;
      }
    }
  }
  if (s.min_p > 0.0f) threshold = std::max(threshold, std::min(s.min_p, 1.0f));
  ref.kept.assign(n, false);
  uint64_t mass = 0;
  for (size_t i = 0; i < n; ++i) {
    ref.kept[i] = ref.p[i] >= threshold && w[i] > 0;
    mass += ref.kept[i] ? w[i] : 0;
  }
  const float u = std::min(std::max(s.uniform, 0.0f), std::nextafter(1.0f, 0.0f));
  const uint64_t target = static_cast<uint64_t>(static_cast<double>(u) * static_cast<double>(mass));
  uint64_t running = 0;
  for (size_t i = 0; i < n; ++i) {
    if (!ref.kept[i]) continue;
    running += w[i];
    if (running > target) {
      ref.id = static_cast<int32_t>(i);
      return ref;
    }
  }
  ADD_FAILURE() << "reference drew nothing";
  return ref;
}

// Random logits of one of several shapes: spread normal, quantized (many ties), a few -inf / NaN.
std::vector<float> random_logits(std::mt19937& rng, size_t n, int kind) {
  std::normal_distribution<float> normal(0.0f, kind == 3 ? 8.0f : 2.0f);
  std::vector<float> l(n);
  for (float& v : l) v = normal(rng);
  if (kind == 1) {
    for (float& v : l) v = std::round(v * 2.0f) / 2.0f;  // ties everywhere
  }
  if (kind == 2) {
    std::uniform_int_distribution<size_t> pick(0, n - 1);
    for (size_t k = 0; k < std::max<size_t>(1, n / 10); ++k) l[pick(rng)] = -kInf;
    l[pick(rng)] = kNaN;
  }
  return l;
}

std::string describe(const RowSampling& s, size_t vocab, int kind) {
  return "vocab " + std::to_string(vocab) + " kind " + std::to_string(kind) + " T " +
         std::to_string(s.temperature) + " k " + std::to_string(s.top_k) + " p " + std::to_string(s.top_p) +
         " min_p " + std::to_string(s.min_p) + " u " + std::to_string(s.uniform);
}

TEST(SampleRow, MatchesSortBasedReference) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  const float temperatures[] = {0.0f, 1e-3f, 0.3f, 1.0f, 1.7f, 1e4f};
  const float top_ps[] = {1.0f, 0.95f, 0.5f, 1e-6f, 0.0f};
  const float min_ps[] = {0.0f, 0.02f, 0.5f, 1.0f};
  SampleScratch scratch;
  int cases = 0;
  for (const size_t vocab : {1, 2, 7, 100, 1000, 4099}) {
    const int32_t top_ks[] = {0,
                              1,
                              2,
                              5,
                              50,
                              static_cast<int32_t>(vocab) - 1,
                              static_cast<int32_t>(vocab),
                              static_cast<int32_t>(vocab) + 10};
    for (int kind = 0; kind < 4; ++kind) {
      const std::vector<float> logits = random_logits(rng, vocab, kind);
      for (const float t : temperatures)
        for (const int32_t k : top_ks)
          for (const float p : top_ps)
            for (const float mp : min_ps) {
              if (vocab > 100 && (rng() % 3) != 0) continue;  // a random third of the large cases
              for (const float u : {0.0f, unit(rng), unit(rng), 0.99999994f}) {
                const RowSampling s{t, k, p, mp, u};
                const Reference ref = reference_sample(logits, s);
                ASSERT_EQ(sample_row(logits.data(), static_cast<int64_t>(vocab), s, scratch), ref.id)
                    << describe(s, vocab, kind);
                ++cases;
              }
            }
    }
  }
  EXPECT_GT(cases, 10000);
}

TEST(SampleRow, EdgeRows) {
  SampleScratch scratch;
  const RowSampling hot{1.0f, 0, 1.0f, 0.0f, 0.5f};
  auto draw = [&](const std::vector<float>& l, RowSampling s) {
    return sample_row(l.data(), static_cast<int64_t>(l.size()), s, scratch);
  };
  EXPECT_EQ(draw({-kInf, -kInf, -kInf}, hot), 0);
  EXPECT_EQ(draw({kNaN, kNaN}, hot), 0);
  EXPECT_EQ(draw({kNaN, -kInf, 3.0f, -kInf}, hot), 2);          // the only finite logit
  EXPECT_EQ(draw({1.0f, kInf, 2.0f, kInf}, hot), 1);            // +inf: greedy, lowest id
  EXPECT_EQ(draw({0.5f, 2.0f, 2.0f, 1.0f}, RowSampling{}), 1);  // temperature 0: lowest id of the max
  EXPECT_EQ(draw({0.5f, 2.0f, 2.0f, 1.0f}, {1.0f, 1, 1.0f, 0.0f, 0.99f}), 1);    // top_k 1: greedy
  EXPECT_EQ(draw({0.5f, 2.0f, 2.0f, 1.0f}, {1e-39f, 0, 1.0f, 0.0f, 0.99f}), 1);  // 1 / T = inf: greedy
  // u = 0 draws the lowest kept id; u just below 1 the highest.
  EXPECT_EQ(draw({-1.0f, 0.0f, -1.0f, 0.0f, -5.0f}, {1.0f, 0, 1.0f, 0.0f, 0.0f}), 0);
  EXPECT_EQ(draw({-1.0f, 0.0f, -1.0f, 0.0f, -5.0f}, {1.0f, 0, 1.0f, 0.0f, 0.99999994f}), 4);
  EXPECT_EQ(draw({-1.0f, 0.0f, -1.0f, 0.0f, -5.0f}, {1.0f, 0, 1.0f, 0.1f, 0.99999994f}),
            3);  // min_p drops id 4
  // p = e^-30 ~ 9e-14 < 2^-40: no mass, never drawn.
  EXPECT_EQ(draw({-30.0f, 0.0f}, {1.0f, 0, 1.0f, 0.0f, 0.0f}), 1);
  // Out-of-range uniforms are clamped.
  EXPECT_EQ(draw({-1.0f, 0.0f, -1.0f}, {1.0f, 0, 1.0f, 0.0f, -3.0f}), 0);
  EXPECT_EQ(draw({-1.0f, 0.0f, -1.0f}, {1.0f, 0, 1.0f, 0.0f, 7.0f}), 2);
  EXPECT_EQ(draw({-1.0f, 0.0f, -1.0f}, {1.0f, 0, 1.0f, 0.0f, kNaN}), 0);
}

// Which ids can be drawn at all, over a fine grid of uniforms.
std::vector<int32_t> reachable(const std::vector<float>& l, RowSampling s) {
  SampleScratch scratch;
  std::vector<int32_t> ids;
  for (int i = 0; i < 4096; ++i) {
    s.uniform = (i + 0.5f) / 4096.0f;
    ids.push_back(sample_row(l.data(), static_cast<int64_t>(l.size()), s, scratch));
  }
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

TEST(SampleRow, TiesAtTheBoundaryAreKept) {
  const std::vector<float> l{1.0f, 3.0f, 2.0f, 3.0f, 2.0f, 3.0f, 0.0f};
  EXPECT_EQ(reachable(l, {1.0f, 2, 1.0f, 0.0f, 0}),
            (std::vector<int32_t>{1, 3, 5}));  // top-2 of three maxima
  EXPECT_EQ(reachable(l, {1.0f, 4, 1.0f, 0.0f, 0}),
            (std::vector<int32_t>{1, 2, 3, 4, 5}));  // 4th is a tie of 2.0
  EXPECT_EQ(reachable(l, {1.0f, 0, 1e-6f, 0.0f, 0}),
            (std::vector<int32_t>{1, 3, 5}));  // tiny top_p: the max ties
  EXPECT_EQ(reachable(l, {1.0f, 0, 0.0f, 0.0f, 0}), (std::vector<int32_t>{1, 3, 5}));
  EXPECT_EQ(reachable(l, {1.0f, 0, 1.0f, 1.0f, 0}), (std::vector<int32_t>{1, 3, 5}));  // min_p 1
  EXPECT_EQ(reachable(l, {1e9f, 2, 1.0f, 0.0f, 0}).size(), 7u);  // huge T: every p rounds to 1, all tied
  // Top-p: masses e^0 x3 = 3, e^-1 x2 = 0.74, e^-2 = 0.14, e^-3 = 0.05; 3 / 3.92 = 0.765 of the total:
  // 0.76 keeps the maxima, 0.77 needs the next value (both of its ties).
  EXPECT_EQ(reachable(l, {1.0f, 0, 0.76f, 0.0f, 0}), (std::vector<int32_t>{1, 3, 5}));
  EXPECT_EQ(reachable(l, {1.0f, 0, 0.77f, 0.0f, 0}), (std::vector<int32_t>{1, 2, 3, 4, 5}));
}

// Many uniforms draw the kept tokens with frequencies p_i / sum(kept p), p from std::exp in double.
// Chi-square with d = kept - 1 degrees of freedom: mean d, sd sqrt(2d); the bound d + 6 sd + 10 fails
// for a biased draw (e.g. one token's mass off by 2% over 400k draws moves chi2 by ~100 for p ~ 0.25).
TEST(SampleRow, FrequenciesFollowTheKeptDistribution) {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  struct Case {
    RowSampling s;
    int kind;
  };
  const Case cases[] = {{{1.0f, 0, 1.0f, 0.0f, 0}, 0},
                        {{0.7f, 20, 1.0f, 0.0f, 0}, 0},
                        {{1.0f, 0, 0.9f, 0.0f, 0}, 0},
                        {{1.3f, 40, 0.8f, 0.05f, 0}, 1},
                        {{1.0f, 0, 1.0f, 0.1f, 0}, 2}};
  SampleScratch scratch;
  for (const Case& c : cases) {
    const std::vector<float> l = random_logits(rng, 200, c.kind);
    const Reference ref = reference_sample(l, c.s);  // the kept set
    float m = -kInf;
    for (float v : l) m = std::isnan(v) ? m : std::max(m, v);
    std::vector<double> expected(l.size(), 0.0);
    double total = 0;
    int kept = 0;
    for (size_t i = 0; i < l.size(); ++i) {
      if (!ref.kept[i]) continue;
      expected[i] = std::exp((static_cast<double>(l[i]) - m) / c.s.temperature);
      total += expected[i];
      ++kept;
    }
    ASSERT_GE(kept, 3);
    const int draws = 400000;
    std::vector<int> count(l.size(), 0);
    RowSampling s = c.s;
    for (int d = 0; d < draws; ++d) {
      s.uniform = unit(rng);
      ++count[sample_row(l.data(), static_cast<int64_t>(l.size()), s, scratch)];
    }
    double chi2 = 0;
    for (size_t i = 0; i < l.size(); ++i) {
      if (!ref.kept[i]) {
        EXPECT_EQ(count[i], 0) << "id " << i << " is not in the kept set";
        continue;
      }
      const double e = draws * expected[i] / total;
      chi2 += (count[i] - e) * (count[i] - e) / e;
    }
    const double dof = kept - 1;
    EXPECT_LT(chi2, dof + 6 * std::sqrt(2 * dof) + 10) << describe(c.s, l.size(), c.kind) << " kept " << kept;
  }
}

}  // namespace
}  // namespace kiln
