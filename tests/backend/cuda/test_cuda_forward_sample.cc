// CudaBackend::forward_sample end to end on a small engine (hf-tiny tiny-qwen2, fp16, vocab 32000):
// with greedy rows it returns forward_argmax's ids, and with sampling rows exactly sample_row applied
// to forward()'s logits of the same step (the kernel and sample_row agree bit for bit, see
// test_cuda_sampling.cc). Checked on a mixed prefill step of three sequences (eager launches) and on
// decode steps of three sequences (the CUDA graph of bucket 4, one padded row), with different rows
// at every call so that rows not uploaded each step would show. Re-running a step rewrites the same
// KV entries with the same values, and the step's kernels are deterministic (asserted).
#include <cuda_runtime.h>

#include <random>
#include <span>
#include <vector>

#include "backend/cuda/cuda_test_util.h"
#include "backend/sample_row.h"
#include "test_util.h"

namespace kiln {
namespace {

using testing::build_and_load;
using testing::shared_path;
using testing::TempDir;

#define STATUS_OK(expr)                                   \
  do {                                                    \
    const Status status_ = (expr);                        \
    ASSERT_TRUE(status_.ok()) << status_.error().message; \
  } while (0)

// Runs `batch` through forward, forward_argmax and forward_sample (greedy rows, then several sampling
// settings) and compares; returns the greedy ids.
void check_step(Backend& backend, const Batch& batch, uint32_t seed, std::vector<int32_t>& greedy_ids) {
  const int64_t rows = static_cast<int64_t>(batch.logit_rows.size()), vocab = backend.vocab_size();
  std::vector<float> logits(rows * vocab), again(rows * vocab);
  STATUS_OK(backend.forward(batch, logits.data()));
  STATUS_OK(backend.forward(batch, again.data()));
  ASSERT_EQ(logits, again) << "the step is not deterministic: the comparisons below need it to be";

  greedy_ids.assign(rows, -1);
  STATUS_OK(backend.forward_argmax(batch, greedy_ids.data()));
  std::vector<int32_t> host_argmax(rows);
  argmax_rows(logits.data(), rows, vocab, host_argmax.data());
  ASSERT_EQ(greedy_ids, host_argmax);

  std::vector<RowSampling> sampling(rows);
  std::vector<int32_t> ids(rows, -1);
  for (int64_t r = 0; r < rows; ++r) sampling[r] = RowSampling{0.0f, 0, 1.0f, 0.0f, 0.7f};
  STATUS_OK(backend.forward_sample(batch, sampling, ids.data()));
  EXPECT_EQ(ids, greedy_ids) << "greedy rows";

  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  const RowSampling settings[] = {{1.0f, 0, 1.0f, 0.0f, 0},
                                  {0.7f, 0, 0.9f, 0.0f, 0},
                                  {1.3f, 40, 0.95f, 0.0f, 0},
                                  {1.0f, 0, 1.0f, 0.02f, 0},
                                  {0.8f, 20, 0.8f, 0.05f, 0},
                                  {1e-3f, 0, 0.5f, 0.0f, 0},
                                  // tiny-qwen2's random-weight logits can be so peaked that T = 1 never
                                  // leaves the argmax: flatten them so some draws must
                                  {20.0f, 0, 1.0f, 0.0f, 0},
                                  {100.0f, 64, 0.99f, 0.0f, 0}};
  SampleScratch scratch;
  int non_greedy = 0;
  for (const RowSampling& setting : settings) {
    for (int draw = 0; draw < 4; ++draw) {
      for (int64_t r = 0; r < rows; ++r) {
        sampling[r] = setting;
        sampling[r].uniform = unit(rng);
        if (r == 1) sampling[r].temperature = 0.0f;  // rows of one step may mix greedy and sampled
      }
      ids.assign(rows, -1);
      STATUS_OK(backend.forward_sample(batch, sampling, ids.data()));
      for (int64_t r = 0; r < rows; ++r) {
        const int32_t want = sample_row(logits.data() + r * vocab, vocab, sampling[r], scratch);
        ASSERT_EQ(ids[r], want) << "row " << r << " T " << sampling[r].temperature << " k "
                                << sampling[r].top_k << " p " << sampling[r].top_p << " min_p "
                                << sampling[r].min_p << " u " << sampling[r].uniform;
        non_greedy += ids[r] != greedy_ids[r];
      }
    }
  }
  EXPECT_GT(non_greedy, 0) << "sampling never left the argmax: the comparison would not see stale rows";
  // Wrong row count.
  EXPECT_FALSE(
      backend.forward_sample(batch, std::span<const RowSampling>(sampling.data(), rows - 1), ids.data())
          .ok());
}

TEST(CudaForwardSample, EqualsSampleRowOnForwardLogitsAndArgmaxWhenGreedy) {
  GPU_OR_SKIP();
  TempDir dir;
  auto model =
      build_and_load(dir, shared_path("fixtures/hf-tiny/tiny-qwen2"), "fp16", true, 256, 2, 256, "cuda");
  ASSERT_TRUE(model);
  Backend& backend = model->backend();
  const int64_t block_size = backend.kv_geometry().block_size;
  const int32_t max_blocks = static_cast<int32_t>(model->info().max_seq_len / block_size);
  const std::vector<std::vector<int32_t>> prompts{
      {11, 400, 2051, 77, 9}, {5, 6, 7, 8, 9, 10, 11, 12, 13}, {31000, 2, 400}};
  const int decode_steps = 4;
  std::vector<int32_t> blocks;
  Batch batch;
  batch.max_blocks_per_seq = max_blocks;
  for (const auto& prompt : prompts) {
    std::vector<int32_t> table(max_blocks, -1);
    for (int64_t b = 0; b * block_size < static_cast<int64_t>(prompt.size()) + decode_steps; ++b) {
      blocks.push_back(*model->kv_pool().allocate());
      table[b] = blocks.back();
    }
    batch.block_tables.insert(batch.block_tables.end(), table.begin(), table.end());
  }
  // Prefill: every prompt token of the three sequences in one step, logits at each last token.
  for (size_t s = 0; s < prompts.size(); ++s) {
    for (size_t i = 0; i < prompts[s].size(); ++i) {
      batch.tokens.push_back(prompts[s][i]);
      batch.positions.push_back(static_cast<int32_t>(i));
      batch.token_seq.push_back(static_cast<int32_t>(s));
    }
    batch.logit_rows.push_back(batch.num_tokens() - 1);
  }
  std::vector<int32_t> next;
  check_step(backend, batch, 1, next);
  if (HasFatalFailure()) return;
  // Decode: one token per sequence, fed the greedy ids.
  for (int step = 0; step < decode_steps; ++step) {
    const std::vector<int32_t> tables = batch.block_tables;
    batch.clear();
    batch.block_tables = tables;
    for (size_t s = 0; s < prompts.size(); ++s) {
      batch.tokens.push_back(next[s]);
      batch.positions.push_back(static_cast<int32_t>(prompts[s].size()) + step);
      batch.token_seq.push_back(static_cast<int32_t>(s));
      batch.logit_rows.push_back(static_cast<int32_t>(s));
    }
    check_step(backend, batch, 10 + step, next);
    if (HasFatalFailure()) return;
  }
  for (int32_t b : blocks) model->kv_pool().free(b);
}

}  // namespace
}  // namespace kiln
