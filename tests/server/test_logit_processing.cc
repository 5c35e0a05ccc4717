// Penalties and logprobs against plain references: the penalty formula written out with explicit
// counts, and log-softmax in long double over a full sort.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <random>

#include "server/logit_processing.h"

namespace kiln {
namespace {

std::vector<float> random_logits(int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> logits(vocab);
  for (float& l : logits) l = normal(rng);
  return logits;
}

TEST(LogitProcessing, PresenceAndFrequencyPenaltiesFollowOpenAIsFormula) {
  const int64_t vocab = 50;
  std::vector<float> logits = random_logits(vocab, 1);
  const std::vector<float> original = logits;
  const std::vector<int32_t> output = {3, 7, 3, 3, 49, 7, 0};
  std::vector<uint8_t> seen(vocab, 0);
  apply_presence_frequency_penalties(logits.data(), output, 0.5f, 0.25f, seen);
  std::map<int32_t, int> counts;
  for (int32_t id : output) ++counts[id];
  for (int64_t j = 0; j < vocab; ++j) {
    const int c = counts.count(j) ? counts[j] : 0;
    const float expected = original[j] - c * 0.25f - (c > 0 ? 0.5f : 0.0f);
    EXPECT_NEAR(logits[j], expected, 1e-5) << "token " << j;
  }
  EXPECT_EQ(std::count(seen.begin(), seen.end(), 1), 0) << "scratch left zeroed";
  // Negative penalties encourage repetition, by the same formula.
  logits = original;
  apply_presence_frequency_penalties(logits.data(), output, -1.0f, 0.0f, seen);
  EXPECT_NEAR(logits[3], original[3] + 1.0f, 1e-6);
  EXPECT_EQ(logits[4], original[4]);
}

TEST(LogitProcessing, LogitBias) {
  std::vector<float> logits = {1, 2, 3};
  const std::vector<std::pair<int32_t, float>> bias = {{0, 100}, {2, -100}};
  apply_logit_bias(logits.data(), bias);
  EXPECT_EQ(logits, (std::vector<float>{101, 2, -97}));
}

TEST(LogitProcessing, TopLogprobsEqualLogSoftmaxOfAFullSort) {
  for (int64_t vocab : {1, 7, 512, 32000}) {
    const std::vector<float> logits = random_logits(vocab, static_cast<uint32_t>(vocab));
    long double total = 0;
    const float max_logit = *std::max_element(logits.begin(), logits.end());
    for (float l : logits) total += std::exp(static_cast<long double>(l) - max_logit);
    const long double log_z = max_logit + std::log(total);
    std::vector<int32_t> order(vocab);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
    for (int k : {0, 1, 5, 20}) {
      std::vector<std::pair<int32_t, float>> top;
      const double z = top_logprobs(logits.data(), vocab, k, top);
      EXPECT_NEAR(z, static_cast<double>(log_z), 1e-9 * std::abs(static_cast<double>(log_z)) + 1e-9);
      ASSERT_EQ(top.size(), static_cast<size_t>(std::min<int64_t>(k, vocab)));
      for (size_t i = 0; i < top.size(); ++i) {
        EXPECT_EQ(top[i].first, order[i]) << "vocab " << vocab << " rank " << i;
        EXPECT_NEAR(top[i].second, static_cast<double>(logits[order[i]] - log_z), 1e-5);
      }
    }
  }
}

TEST(LogitProcessing, TopLogprobsTiesPreferTheLowerId) {
  const std::vector<float> logits = {1, 5, 5, 2, 5};
  std::vector<std::pair<int32_t, float>> top;
  top_logprobs(logits.data(), 5, 3, top);
  ASSERT_EQ(top.size(), 3u);
  EXPECT_EQ(top[0].first, 1);
  EXPECT_EQ(top[1].first, 2);
  EXPECT_EQ(top[2].first, 4);
}

}  // namespace
}  // namespace kiln
