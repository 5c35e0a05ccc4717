// End to end on the real stories260K engine (CPU): requests of different prompt lengths and output
// budgets run together through the Scheduler with greedy sampling produce exactly the ids each gets
// alone through generate() at temperature 0 — with chunked prefill (small token budget), mixed
// decode/prefill steps and a shared prompt prefix served from the prefix cache — and every KV block
// is back in the pool at the end. The ids alone are weak evidence on a 260K-parameter model fed
// random tokens (its greedy choice barely depends on the context), so the logits at each prompt's
// last token are compared too: they see every KV block of the prompt, cached ones included.
#include <random>

#include "runtime/generator.h"
#include "runtime/scheduler.h"
#include "test_util.h"

namespace kiln {
namespace {

using testing::build_and_load;
using testing::shared_path;
using testing::TempDir;

TEST(SchedulerEndToEnd, Stories260KMatchesGenerateAlone) {
  TempDir dir;
  auto model =
      build_and_load(dir, shared_path("models/stories260K/stories260K.bin"), "fp32", true, 256, 2, 256);
  ASSERT_TRUE(model);
  Backend& backend = model->backend();
  const ModelInfo& info = model->info();

  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> token(
      3, static_cast<int32_t>(std::min<int64_t>(info.vocab_size, 512)) - 1);
  const int64_t prompt_lengths[] = {5, 40, 17, 70, 1, 45};
  const int32_t max_new[] = {10, 25, 3, 15, 30, 8};
  std::vector<std::vector<int32_t>> prompts;
  for (int64_t len : prompt_lengths) {
    std::vector<int32_t> p{1};
    for (int64_t i = 1; i < len; ++i) p.push_back(token(rng));
    prompts.push_back(p);
  }
  // Request 5 shares its first 40 tokens (two full 16-token blocks and more) with request 1.
  std::copy(prompts[1].begin(), prompts[1].end(), prompts[5].begin());

  std::vector<std::vector<int32_t>> expected;
  std::vector<std::vector<float>> expected_prompt_logits;  // [vocab] at each prompt's last token
  for (size_t r = 0; r < prompts.size(); ++r) {
    GenerationRequest request;
    request.prompt_ids = prompts[r];
    request.max_new_tokens = max_new[r];
    request.sampling.temperature = 0;
    request.want_last_logits = true;
    auto result = generate(*model, request);
    ASSERT_TRUE(result.ok()) << result.error().message;
    expected.push_back(result->ids);
    expected_prompt_logits.push_back(result->last_logits);
  }
  ASSERT_EQ(model->kv_pool().num_free(), model->kv_pool().num_blocks());

  SchedulerConfig config;
  config.block_size = backend.kv_geometry().block_size;
  config.max_seq_len = info.max_seq_len;
  config.max_tokens_per_step = 24;  // forces chunked prefill and mixed steps
  config.max_logit_rows = backend.max_logit_rows();
  config.max_running = 4;  // some requests wait for others to finish
  std::map<int64_t, std::vector<int32_t>> outputs;
  {
    Scheduler scheduler(config, model->kv_pool());
    for (size_t r = 0; r < prompts.size(); ++r) {
      ASSERT_TRUE(scheduler.add({static_cast<int64_t>(r), prompts[r], max_new[r], info.eos_token_ids}).ok());
    }
    SchedulerStep step;
    std::vector<int32_t> ids;
    std::vector<float> logits;
    const int64_t vocab = backend.vocab_size();
    int64_t mixed_steps = 0;
    int64_t prompt_logit_checks = 0;
    for (int i = 0; i < 1000 && scheduler.has_unfinished(); ++i) {
      scheduler.schedule(step);
      ASSERT_FALSE(step.empty());
      ASSERT_LE(step.batch.num_tokens(), config.max_tokens_per_step);
      mixed_steps += step.num_decode_tokens > 0 && step.num_prefill_tokens > 0 ? 1 : 0;
      const int64_t rows = static_cast<int64_t>(step.logit_requests.size());
      ids.resize(rows);
      logits.resize(rows * vocab);
      const Status status = backend.forward(step.batch, logits.data());
      ASSERT_TRUE(status.ok()) << status.error().message;
      argmax_rows(logits.data(), rows, vocab, ids.data());
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t id = step.logit_requests[r];
        if (step.batch.positions[step.batch.logit_rows[r]] + 1 != prompt_lengths[id]) continue;
        // Same math, different batching and KV blocks: fp32 summation order only (as in
        // test_batch_equivalence).
        double num = 0, den = 0;
        for (int64_t v = 0; v < vocab; ++v) {
          const double a = logits[r * vocab + v], b = expected_prompt_logits[id][v];
          num += (a - b) * (a - b);
          den += b * b;
        }
        EXPECT_LT(std::sqrt(num / den), 1e-5) << "request " << id << " logits at its last prompt token";
        ++prompt_logit_checks;
      }
      for (FinishedRequest& done : scheduler.commit(step, ids)) outputs[done.id] = std::move(done.output_ids);
    }
    EXPECT_FALSE(scheduler.has_unfinished());
    EXPECT_GT(mixed_steps, 0);
    EXPECT_EQ(prompt_logit_checks, static_cast<int64_t>(prompts.size()));
    EXPECT_GE(scheduler.block_manager().stats().hit_tokens, 32)
        << "request 5 reuses request 1's prefix blocks";
    scheduler.block_manager().reset_prefix_cache();
    EXPECT_EQ(model->kv_pool().num_free(), model->kv_pool().num_blocks());
  }
  for (size_t r = 0; r < prompts.size(); ++r) {
    EXPECT_EQ(outputs[static_cast<int64_t>(r)], expected[r])
        << "request " << r << " (prompt " << prompt_lengths[r] << ")";
  }
}

}  // namespace
}  // namespace kiln
