#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <set>

#include <gtest/gtest.h>

#include "runtime/kv_block_pool.h"
#include "runtime/sampler.h"

namespace kiln {
namespace {

std::vector<float> logits_of(const std::vector<double>& probs) {
  std::vector<float> l;
  for (double p : probs) l.push_back(static_cast<float>(std::log(p)));
  return l;
}

// Draws n samples and returns the frequency of each id.
std::map<int32_t, double> frequencies(const SamplingParams& params, const std::vector<float>& logits, int n) {
  Sampler sampler(static_cast<int64_t>(logits.size()), params);
  std::map<int32_t, double> f;
  for (int i = 0; i < n; ++i) {
    std::vector<float> copy = logits;
    f[sampler.sample(copy.data(), {})] += 1.0 / n;
  }
  return f;
}

TEST(Sampler, GreedyPicksArgmax) {
  Sampler sampler(5, SamplingParams{.temperature = 0.0f});
  std::vector<float> logits{0.1f, 2.0f, -1.0f, 1.9f, 0.0f};
  EXPECT_EQ(sampler.sample(logits.data(), {}), 1);
}

TEST(Sampler, RepetitionPenaltyDividesPositiveAndMultipliesNegative) {
  Sampler sampler(3, SamplingParams{.temperature = 0.0f, .repetition_penalty = 2.0f});
  std::vector<float> logits{3.0f, 2.0f, -1.0f};
  const std::vector<int32_t> history{0, 2, 0};
  EXPECT_EQ(sampler.sample(logits.data(), history), 1);  // 3 / 2 = 1.5 < 2
  EXPECT_FLOAT_EQ(logits[0], 1.5f);
  EXPECT_FLOAT_EQ(logits[2], -2.0f);
}

TEST(Sampler, SameSeedSameTokensDifferentSeedDifferentTokens) {
  const std::vector<float> logits(100, 0.0f);
  auto draw = [&](uint64_t seed) {
    Sampler sampler(100, SamplingParams{.temperature = 1.0f, .seed = seed});
    std::vector<int32_t> out;
    for (int i = 0; i < 50; ++i) {
      std::vector<float> copy = logits;
      out.push_back(sampler.sample(copy.data(), {}));
    }
    return out;
  };
  EXPECT_EQ(draw(7), draw(7));
  EXPECT_NE(draw(7), draw(8));
}

TEST(Sampler, FollowsTheDistribution) {
  const auto f = frequencies(SamplingParams{.temperature = 1.0f, .seed = 1}, logits_of({0.5, 0.3, 0.2}), 20000);
  EXPECT_NEAR(f.at(0), 0.5, 0.02);
  EXPECT_NEAR(f.at(1), 0.3, 0.02);
  EXPECT_NEAR(f.at(2), 0.2, 0.02);
}

TEST(Sampler, TemperatureSharpens) {
  // p ∝ (0.5, 0.3, 0.2)^(1/0.5) = (0.25, 0.09, 0.04) / 0.38
  const auto f = frequencies(SamplingParams{.temperature = 0.5f, .seed = 2}, logits_of({0.5, 0.3, 0.2}), 20000);
  EXPECT_NEAR(f.at(0), 0.25 / 0.38, 0.02);
  EXPECT_NEAR(f.at(2), 0.04 / 0.38, 0.01);
}

TEST(Sampler, TopKKeepsOnlyTheKMostLikely) {
  const auto f = frequencies(SamplingParams{.temperature = 1.0f, .top_k = 2, .seed = 3}, logits_of({0.1, 0.4, 0.2, 0.3}), 20000);
  EXPECT_EQ(f.size(), 2u);
  EXPECT_NEAR(f.at(1), 0.4 / 0.7, 0.02);
  EXPECT_NEAR(f.at(3), 0.3 / 0.7, 0.02);
}

TEST(Sampler, TopPKeepsTheSmallestPrefixReachingP) {
  // Sorted: 0.4 (id 1), 0.3 (id 3), 0.2, 0.1: top_p 0.6 keeps ids 1 and 3 (0.7 >= 0.6).
  const auto f = frequencies(SamplingParams{.temperature = 1.0f, .top_p = 0.6f, .seed = 4}, logits_of({0.1, 0.4, 0.2, 0.3}), 20000);
  EXPECT_EQ(f.size(), 2u);
  EXPECT_TRUE(f.count(1) && f.count(3));
}

TEST(Sampler, MinPDropsTokensBelowAFractionOfTheMax) {
  // p_max 0.4: min_p 0.6 keeps p >= 0.24: ids 1 (0.4) and 3 (0.3).
  const auto f = frequencies(SamplingParams{.temperature = 1.0f, .min_p = 0.6f, .seed = 5}, logits_of({0.1, 0.4, 0.2, 0.3}), 20000);
  EXPECT_EQ(f.size(), 2u);
  EXPECT_NEAR(f.at(1), 0.4 / 0.7, 0.02);
}

// sample() is the penalty followed by sample_row on the stream's next RowSampling: a twin sampler of
// the same seed that hands its rows to sample_row (as generate() hands them to forward_sample)
// draws the same ids, whatever the parameters, greedy included (it consumes one uniform too).
TEST(Sampler, SampleEqualsSampleRowOnTheSameStream) {
  std::mt19937 rng(9);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> logits(300);
  const SamplingParams params[] = {{.temperature = 0.8f, .top_p = 0.9f, .seed = 1},
                                   {.temperature = 1.2f, .top_k = 20, .min_p = 0.05f, .seed = 2},
                                   {.temperature = 0.0f, .seed = 3}};
  for (const SamplingParams& p : params) {
    Sampler host(300, p), twin(300, p);
    SampleScratch scratch;
    int differing_from_greedy = 0;
    for (int step = 0; step < 200; ++step) {
      for (float& l : logits) l = normal(rng);
      std::vector<float> copy = logits;
      const int32_t id = host.sample(copy.data(), {});
      const RowSampling row = twin.next_row();
      EXPECT_EQ(row.temperature, p.temperature);
      EXPECT_EQ(row.top_k, p.top_k);
      ASSERT_EQ(id, sample_row(logits.data(), 300, row, scratch)) << "step " << step;
      const auto argmax = std::max_element(logits.begin(), logits.end()) - logits.begin();
      differing_from_greedy += id != static_cast<int32_t>(argmax);
    }
    if (p.temperature > 0) EXPECT_GT(differing_from_greedy, 20);  // it does sample
  }
}

// next_uniform: in [0, 1), about uniform (16 bins of 100k draws: each within 5 sd of 6250).
TEST(Sampler, NextUniformIsUniform) {
  Sampler sampler(1, SamplingParams{.seed = 5});
  std::vector<int> bins(16, 0);
  for (int i = 0; i < 100000; ++i) {
    const float u = sampler.next_uniform();
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    ++bins[static_cast<int>(u * 16)];
  }
  for (int b : bins) EXPECT_NEAR(b, 6250, 5 * std::sqrt(6250.0));
}

TEST(KvBlockPool, AllocatesEveryBlockOnceThenReportsNone) {
  KvBlockPool pool(4);
  std::set<int32_t> got;
  for (int i = 0; i < 4; ++i) {
    auto b = pool.allocate();
    ASSERT_TRUE(b.has_value());
    got.insert(*b);
  }
  EXPECT_EQ(got, (std::set<int32_t>{0, 1, 2, 3}));
  EXPECT_FALSE(pool.allocate().has_value());
  EXPECT_EQ(pool.num_free(), 0);
  pool.free(2);
  EXPECT_EQ(pool.num_free(), 1);
  EXPECT_EQ(pool.allocate(), std::optional<int32_t>(2));
}

}  // namespace
}  // namespace kiln
