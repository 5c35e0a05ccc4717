// The sampling kernel (cuda::sample) against the host's sample_row on the same logits, for vocab 512,
// 32000 and 151936: many rows per launch, every feature alone and combined, edge cases (top_k above
// the vocabulary, tiny top_p, min_p 1, tiny and huge temperatures, -inf / NaN / +inf logits, ties,
// uniforms 0 and just below 1). sample_row itself is checked against a sort-based reference in
// tests/backend/test_sample_row.cc.
//
// The ids must be equal, not merely close: both sides compute p with the same exactly rounded float
// operations (sample_row.h) and sum masses as integers, so no summation order can move a boundary
// or a draw. Any difference is a bug, not rounding. Greedy rows are also checked against
// cuda::argmax.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/sampling.h"
#include "backend/sample_row.h"
#include "cuda_test_util.h"

namespace kiln::cuda::testing {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

#define STATUS_OK(expr)                                   \
  do {                                                    \
    const Status status_ = (expr);                        \
    ASSERT_TRUE(status_.ok()) << status_.error().message; \
  } while (0)

// A row of one of several shapes: LLM-like spread, a peaked row, quantized values (ties), -inf and NaN
// entries, a flat row (all equal), a row with one +inf, a row of -inf only.
std::vector<float> make_row(std::mt19937& rng, int64_t vocab, int kind) {
  std::normal_distribution<float> normal(0.0f, kind == 1 ? 6.0f : 2.5f);
  std::uniform_int_distribution<int64_t> pick(0, vocab - 1);
  std::vector<float> row(vocab);
  for (float& v : row) v = normal(rng);
  switch (kind) {
    case 1:  // peaked: a few tokens far above the rest
      for (int i = 0; i < 3; ++i) row[pick(rng)] = 30.0f + i;
      break;
    case 2:  // ties everywhere
      for (float& v : row) v = std::round(v);
      break;
    case 3:  // masked tokens
      for (int64_t i = 0; i < vocab / 5; ++i) row[pick(rng)] = -kInf;
      row[pick(rng)] = kNaN;
      break;
    case 4:
      std::fill(row.begin(), row.end(), 0.25f);
      break;
    case 5:
      row[pick(rng)] = kInf;
      break;
    case 6:
      std::fill(row.begin(), row.end(), -kInf);
      break;
    default:
      break;
  }
  return row;
}

std::string describe(const RowSampling& s) {
  return "T " + std::to_string(s.temperature) + " k " + std::to_string(s.top_k) + " p " +
         std::to_string(s.top_p) + " min_p " + std::to_string(s.min_p) + " u " + std::to_string(s.uniform);
}

// Runs the kernel on rows x vocab logits with one RowSampling per row and returns the ids.
std::vector<int32_t> device_sample(const std::vector<float>& logits, int64_t vocab,
                                   const std::vector<RowSampling>& rows) {
  DeviceBuffer d_logits(logits), d_rows(rows), d_ids(rows.size() * sizeof(int32_t));
  const Status status = sample(d_logits.get<float>(), static_cast<int64_t>(rows.size()), vocab,
                               d_rows.get<RowSampling>(), d_ids.get<int32_t>(), nullptr);
  EXPECT_TRUE(status.ok()) << (status.ok() ? "" : status.error().message);
  return d_ids.download<int32_t>();
}

class CudaSample : public ::testing::TestWithParam<int64_t> {};

TEST_P(CudaSample, EqualsSampleRow) {
  GPU_OR_SKIP();
  const int64_t vocab = GetParam();
  std::mt19937 rng(static_cast<uint32_t>(vocab));
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  const float temperatures[] = {0.0f, 1e-4f, 0.6f, 1.0f, 1.8f, 1e9f};
  const int32_t top_ks[] = {0,
                            1,
                            2,
                            40,
                            1000,
                            static_cast<int32_t>(vocab - 1),
                            static_cast<int32_t>(vocab),
                            static_cast<int32_t>(vocab + 7)};
  const float top_ps[] = {1.0f, 0.95f, 0.5f, 1e-7f, 0.0f};
  const float min_ps[] = {0.0f, 0.05f, 1.0f};
  // Every combination is a row; rows are batched 64 per launch over 7 row shapes.
  std::vector<RowSampling> params;
  for (const float t : temperatures)
    for (const int32_t k : top_ks)
      for (const float p : top_ps)
        for (const float mp : min_ps) params.push_back({t, k, p, mp, 0.0f});
  const int64_t batch = 64;
  SampleScratch scratch;
  int64_t checked = 0, greedy_checked = 0;
  for (size_t first = 0; first < params.size(); first += batch) {
    const int64_t rows = std::min<int64_t>(batch, static_cast<int64_t>(params.size() - first));
    std::vector<float> logits;
    std::vector<RowSampling> sampling;
    for (int64_t r = 0; r < rows; ++r) {
      const std::vector<float> row = make_row(rng, vocab, static_cast<int>((first / batch + r) % 7));
      logits.insert(logits.end(), row.begin(), row.end());
      RowSampling s = params[first + r];
      const int pick = static_cast<int>(rng() % 8);
      s.uniform = pick == 0 ? 0.0f : pick == 1 ? 0.99999994f : unit(rng);
      sampling.push_back(s);
    }
    const std::vector<int32_t> got = device_sample(logits, vocab, sampling);
    // Greedy reference on the device too: the existing argmax kernel.
    DeviceBuffer d_logits(logits), d_ids(rows * sizeof(int32_t));
    STATUS_OK(argmax(d_logits.get<float>(), rows, vocab, d_ids.get<int32_t>(), nullptr));
    const std::vector<int32_t> argmax_ids = d_ids.download<int32_t>();
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = logits.data() + r * vocab;
      const int32_t want = sample_row(row, vocab, sampling[r], scratch);
      ASSERT_EQ(got[r], want) << "vocab " << vocab << " row " << r << " shape " << (first / batch + r) % 7
                              << " " << describe(sampling[r]);
      bool finite = true;
      for (int64_t i = 0; i < vocab; ++i) finite = finite && std::isfinite(row[i]);
      if ((sampling[r].temperature == 0.0f || sampling[r].top_k == 1) && finite) {
        EXPECT_EQ(got[r], argmax_ids[r]) << "greedy row " << r;  // argmax_kernel assumes finite logits
        ++greedy_checked;
      }
      ++checked;
    }
  }
  EXPECT_EQ(checked, static_cast<int64_t>(params.size()));
  EXPECT_GT(greedy_checked, 50);
}

INSTANTIATE_TEST_SUITE_P(Vocab, CudaSample, ::testing::Values(512, 32000, 151936),
                         [](const ::testing::TestParamInfo<int64_t>& info) {
                           return std::to_string(info.param);
                         });

// Many uniforms on one row: the device draws what the host draws for each (the draw and the kept set
// are exercised at every position, not only at a few targets), and distinct uniforms reach several ids.
// argmax against the host (lowest id on ties), on the vectorized path (vocab % 4 == 0) and the scalar
// one, with the maximum at the first, last and a middle id, and ties between several ids.
TEST(CudaArgmax, EqualsHostArgmax) {
  GPU_OR_SKIP();
  std::mt19937 rng(12);
  std::uniform_real_distribution<float> dist(-20.0f, 20.0f);
  for (const int64_t vocab : {32000, 151936, 1003, 7, 4}) {
    const int64_t rows = 6;
    std::vector<float> logits(rows * vocab);
    for (float& v : logits) v = dist(rng);
    const auto at = [&](int64_t r, int64_t i) -> float& { return logits[r * vocab + i]; };
    at(0, 0) = 100.0f;                                           // first id
    at(1, vocab - 1) = 100.0f;                                   // last id
    at(2, vocab / 2) = 100.0f;                                   // middle
    at(3, vocab - 1) = at(3, vocab / 3) = at(3, vocab / 2) = 100.0f;  // ties: the lowest id wins
    for (int64_t i = 0; i < vocab; ++i) at(4, i) = -1.0f;        // all equal: id 0
    DeviceBuffer d_logits(logits), d_ids(rows * sizeof(int32_t));
    STATUS_OK(argmax(d_logits.get<float>(), rows, vocab, d_ids.get<int32_t>(), nullptr));
    const std::vector<int32_t> got = d_ids.download<int32_t>();
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = logits.data() + r * vocab;
      const int64_t want = std::max_element(row, row + vocab) - row;  // the first of equal maxima
      EXPECT_EQ(got[r], want) << "vocab " << vocab << " row " << r;
    }
  }
}

TEST(CudaSample, ManyUniformsOneRow) {
  GPU_OR_SKIP();
  const int64_t vocab = 32000, rows = 512;
  std::mt19937 rng(3);
  const std::vector<float> row = make_row(rng, vocab, 0);
  std::vector<float> logits;
  std::vector<RowSampling> sampling;
  for (int64_t r = 0; r < rows; ++r) {
    logits.insert(logits.end(), row.begin(), row.end());
    sampling.push_back({0.9f, r % 2 ? 50 : 0, 0.95f, 0.0f, (r + 0.5f) / rows});
  }
  const std::vector<int32_t> got = device_sample(logits, vocab, sampling);
  SampleScratch scratch;
  std::vector<int32_t> distinct;
  for (int64_t r = 0; r < rows; ++r) {
    ASSERT_EQ(got[r], sample_row(row.data(), vocab, sampling[r], scratch)) << describe(sampling[r]);
    if (std::find(distinct.begin(), distinct.end(), got[r]) == distinct.end()) distinct.push_back(got[r]);
  }
  EXPECT_GT(distinct.size(), 10u);
}

TEST(CudaSample, RejectsBadShapes) {
  GPU_OR_SKIP();
  EXPECT_FALSE(sample(nullptr, 0, 512, nullptr, nullptr, nullptr).ok());
  EXPECT_FALSE(sample(nullptr, 1, 0, nullptr, nullptr, nullptr).ok());
  EXPECT_FALSE(sample(nullptr, 1, kMaxSampleVocab + 1, nullptr, nullptr, nullptr).ok());
}

// Time per launch at vocab 151936 (Qwen2), printed for the README; asserts only that the timed
// launches still agree with the host.
TEST(CudaSample, Timing) {
  GPU_OR_SKIP();
  const int64_t vocab = 151936;
  std::mt19937 rng(5);
  struct Config {
    const char* name;
    RowSampling s;
  };
  const Config configs[] = {{"greedy", {0.0f, 0, 1.0f, 0.0f, 0.3f}},
                            {"temperature", {0.8f, 0, 1.0f, 0.0f, 0.3f}},
                            {"top_p 0.9", {0.8f, 0, 0.9f, 0.0f, 0.3f}},
                            {"top_k 50 + top_p 0.9", {0.8f, 50, 0.9f, 0.0f, 0.3f}},
                            {"top_k 50 + top_p 0.9 + min_p 0.05", {0.8f, 50, 0.9f, 0.05f, 0.3f}}};
  for (const int64_t rows : {1, 8, 64}) {
    std::vector<float> logits;
    for (int64_t r = 0; r < rows; ++r) {
      const std::vector<float> row = make_row(rng, vocab, 0);
      logits.insert(logits.end(), row.begin(), row.end());
    }
    DeviceBuffer d_logits(logits), d_ids(rows * sizeof(int32_t));
    for (const Config& c : configs) {
      const std::vector<RowSampling> sampling(rows, c.s);
      DeviceBuffer d_rows(sampling);
      cudaEvent_t start, stop;
      cudaEventCreate(&start);
      cudaEventCreate(&stop);
      STATUS_OK(sample(d_logits.get<float>(), rows, vocab, d_rows.get<RowSampling>(), d_ids.get<int32_t>(),
                       nullptr));
      const int reps = 20;
      cudaEventRecord(start);
      for (int i = 0; i < reps; ++i) {
        STATUS_OK(sample(d_logits.get<float>(), rows, vocab, d_rows.get<RowSampling>(), d_ids.get<int32_t>(),
                         nullptr));
      }
      cudaEventRecord(stop);
      cudaEventSynchronize(stop);
      float ms = 0;
      cudaEventElapsedTime(&ms, start, stop);
      cudaEventDestroy(start);
      cudaEventDestroy(stop);
      std::printf("sample vocab %lld rows %lld %-36s %8.1f us\n", static_cast<long long>(vocab),
                  static_cast<long long>(rows), c.name, 1000.0 * ms / reps);
      const std::vector<int32_t> ids = d_ids.download<int32_t>();
      SampleScratch scratch;
      for (int64_t r = 0; r < rows; ++r) {
        ASSERT_EQ(ids[r], sample_row(logits.data() + r * vocab, vocab, sampling[r], scratch)) << c.name;
      }
    }
  }
}

}  // namespace
}  // namespace kiln::cuda::testing
