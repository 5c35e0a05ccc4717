// The continuous-batching scheduler and its prefix-caching block manager as pure logic: steps are
// "run" by a fake model whose sampled id is a fixed function of (request, position), so any
// scheduling (chunking, batching, preemption, cache hits) must give every request the same output
// as running it alone, and every step is checked against the batch invariants.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>

#include "runtime/scheduler.h"

namespace kiln {
namespace {

constexpr int64_t kBlock = 4;

SchedulerConfig config(int64_t budget, int64_t max_seq_len = 64) {
  SchedulerConfig c;
  c.block_size = kBlock;
  c.max_seq_len = max_seq_len;
  c.max_tokens_per_step = budget;
  c.max_logit_rows = 16;
  c.max_running = 16;
  return c;
}

std::vector<int32_t> iota_tokens(int32_t first, int64_t n) {
  std::vector<int32_t> t(n);
  for (int64_t i = 0; i < n; ++i) t[i] = first + static_cast<int32_t>(i);
  return t;
}

// The fake model: the token after position p of request id.
int32_t fake_sample(int64_t id, int32_t position) {
  return static_cast<int32_t>((id * 31 + position * 7) % 97 + 100);
}

// Runs steps until nothing is left, checking every step; returns each request's output and the
// positions its logit rows came from.
struct Driver {
  Scheduler& scheduler;
  int64_t budget;
  int64_t block_size = kBlock;
  std::map<int64_t, std::vector<int32_t>> tokens;      // what the driver knows of each request's sequence
  std::map<int64_t, std::vector<int32_t>> outputs;     // finished outputs
  std::map<int64_t, std::vector<int32_t>> sampled_at;  // positions of each request's logit rows
  int64_t steps = 0;

  void add(int64_t id, std::vector<int32_t> prompt, int32_t max_new) {
    tokens[id] = prompt;
    ASSERT_TRUE(scheduler.add({id, std::move(prompt), max_new, {}}).ok());
  }

  // One step: schedule, check, "forward", commit.
  SchedulerStep step() {
    SchedulerStep s;
    scheduler.schedule(s);
    check(s);
    std::vector<int32_t> sampled;
    for (int32_t row : s.batch.logit_rows) {
      const int64_t id = s.logit_requests[sampled.size()];
      sampled.push_back(fake_sample(id, s.batch.positions[row]));
      sampled_at[id].push_back(s.batch.positions[row]);
    }
    for (size_t r = 0; r < s.logit_requests.size(); ++r) tokens[s.logit_requests[r]].push_back(sampled[r]);
    for (FinishedRequest& f : scheduler.commit(s, sampled)) outputs[f.id] = f.output_ids;
    ++steps;
    return s;
  }

  void run(int64_t max_steps = 1000) {
    while (scheduler.has_unfinished() && steps < max_steps) {
      const SchedulerStep s = step();
      ASSERT_FALSE(s.empty()) << "no progress with unfinished requests";
    }
    EXPECT_FALSE(scheduler.has_unfinished());
  }

  void check(const SchedulerStep& s) {
    const Batch& b = s.batch;
    ASSERT_LE(b.num_tokens(), budget);
    ASSERT_EQ(b.positions.size(), b.tokens.size());
    ASSERT_EQ(b.token_seq.size(), b.tokens.size());
    ASSERT_EQ(b.num_seqs(), static_cast<int32_t>(s.sequences.size()));
    ASSERT_EQ(b.logit_rows.size(), s.logit_requests.size());
    // Decode tokens (one per sequence, each sampled) come before any prefill chunk.
    ASSERT_LE(s.num_decode_tokens, static_cast<int64_t>(s.sequences.size()));
    int64_t prefill_tokens = 0;
    for (size_t i = 0; i < s.sequences.size(); ++i) {
      const ScheduledSequence& q = s.sequences[i];
      if (static_cast<int64_t>(i) < s.num_decode_tokens) {
        ASSERT_EQ(q.num_tokens, 1);
        ASSERT_TRUE(q.samples);
      } else {
        prefill_tokens += q.num_tokens;
      }
    }
    ASSERT_EQ(prefill_tokens, s.num_prefill_tokens);
    ASSERT_EQ(s.num_decode_tokens + s.num_prefill_tokens, b.num_tokens());
    // Every token: the right id at its position, a valid block for its position.
    std::map<int32_t, std::pair<int64_t, int32_t>> owner;  // block -> (request, index in its table)
    for (int32_t t = 0; t < b.num_tokens(); ++t) {
      const int32_t row = b.token_seq[t];
      const int64_t id = s.sequences[row].request_id;
      const int32_t pos = b.positions[t];
      ASSERT_EQ(b.tokens[t], tokens[id][pos]) << "request " << id << " position " << pos;
      const int32_t block = b.block_tables[row * b.max_blocks_per_seq + pos / block_size];
      ASSERT_GE(block, 0) << "request " << id << " position " << pos << " has no block";
    }
    // Blocks: shared between two rows only as the same full, already computed prefix block.
    for (int32_t row = 0; row < b.num_seqs(); ++row) {
      const ScheduledSequence& q = s.sequences[row];
      for (int32_t i = 0; i < b.max_blocks_per_seq; ++i) {
        const int32_t block = b.block_tables[row * b.max_blocks_per_seq + i];
        if (block < 0) continue;
        const auto [it, fresh] = owner.emplace(block, std::make_pair(q.request_id, i));
        if (fresh) continue;
        const int64_t other = it->second.first;
        ASSERT_EQ(it->second.second, i) << "block " << block << " at different table indices";
        ASSERT_LE((i + 1) * block_size, q.first_position)
            << "shared block " << block << " not computed for " << q.request_id;
        const auto& a = tokens[q.request_id];
        const auto& c = tokens[other];
        ASSERT_TRUE(std::equal(a.begin() + i * block_size, a.begin() + (i + 1) * block_size,
                               c.begin() + i * block_size))
            << "block " << block << " shared by requests " << q.request_id << " and " << other
            << " with different content";
      }
    }
    // A logit row only at a sequence's last known token.
    for (size_t r = 0; r < b.logit_rows.size(); ++r) {
      const int64_t id = s.logit_requests[r];
      ASSERT_EQ(b.positions[b.logit_rows[r]] + 1, static_cast<int32_t>(tokens[id].size()));
    }
  }
};

// Expected output of a request run alone: the fake model's chain.
std::vector<int32_t> alone(int64_t id, int64_t prompt_len, int32_t max_new) {
  std::vector<int32_t> out;
  for (int32_t i = 0; i < max_new; ++i)
    out.push_back(fake_sample(id, static_cast<int32_t>(prompt_len - 1 + i)));
  return out;
}

TEST(Scheduler, DecodeFirstThenChunkedPrefillUnderTheBudget) {
  KvBlockPool pool(64);
  Scheduler scheduler(config(8), pool);
  Driver d{scheduler, 8};
  d.add(1, iota_tokens(10, 3), 20);
  d.step();  // prefill of request 1
  d.add(2, iota_tokens(40, 20), 2);
  std::vector<int32_t> chunk_starts;
  for (int i = 0; i < 3; ++i) {
    const SchedulerStep s = d.step();
    ASSERT_EQ(s.sequences.size(), 2u);
    EXPECT_EQ(s.sequences[0].request_id, 1);  // the decode token first
    EXPECT_EQ(s.sequences[0].num_tokens, 1);
    EXPECT_EQ(s.num_decode_tokens, 1);
    EXPECT_EQ(s.batch.num_tokens(), i < 2 ? 8 : 7);  // 1 + 7, 1 + 7, 1 + 6 (the prompt's rest)
    EXPECT_EQ(s.sequences[1].request_id, 2);
    chunk_starts.push_back(static_cast<int32_t>(s.sequences[1].first_position));
    EXPECT_EQ(s.sequences[1].samples, i == 2) << "logit row only at the prompt's last token";
    EXPECT_EQ(s.logit_requests.size(), i == 2 ? 2u : 1u);
  }
  EXPECT_EQ(chunk_starts, (std::vector<int32_t>{0, 7, 14}));
  d.run();
  EXPECT_EQ(d.outputs[1], alone(1, 3, 20));
  EXPECT_EQ(d.outputs[2], alone(2, 20, 2));
  EXPECT_EQ(d.sampled_at[2], (std::vector<int32_t>{19, 20}));
  EXPECT_EQ(scheduler.block_manager().num_available_blocks(), pool.num_blocks());
}

TEST(Scheduler, PreemptsTheNewestWhenBlocksRunOutAndRecomputesIt) {
  KvBlockPool pool(8);  // 32 token slots; two requests growing to 8 + 15 tokens each need 12 blocks
  SchedulerConfig c = config(32);
  c.prefix_caching = false;
  Scheduler scheduler(c, pool);
  Driver d{scheduler, 32};
  d.add(1, iota_tokens(10, 8), 16);
  d.add(2, iota_tokens(50, 8), 16);
  bool preempted = false;
  while (scheduler.has_unfinished() && d.steps < 200) {
    const SchedulerStep s = d.step();
    for (int64_t id : s.preempted) {
      EXPECT_EQ(id, 2) << "the most recently admitted request gives way";
      preempted = true;
      EXPECT_EQ(scheduler.num_waiting(), 1);
    }
  }
  EXPECT_TRUE(preempted);
  EXPECT_GE(scheduler.num_preemptions(), 1);
  EXPECT_EQ(d.outputs[1], alone(1, 8, 16));
  EXPECT_EQ(d.outputs[2], alone(2, 8, 16)) << "recomputed after preemption with the same positions";
  // Each request sampled once per position, in order, despite the recompute.
  EXPECT_EQ(d.sampled_at[2], iota_tokens(7, 16));
  EXPECT_EQ(pool.num_free(), pool.num_blocks());
}

TEST(Scheduler, AbortFreesBlocksAtOnce) {
  KvBlockPool pool(16);
  Scheduler scheduler(config(64), pool);
  Driver d{scheduler, 64};
  d.add(1, iota_tokens(10, 10), 50);
  d.add(2, iota_tokens(60, 5), 50);
  SchedulerStep s;
  scheduler.schedule(s);
  EXPECT_EQ(pool.num_free(), 16 - 3 - 2);
  EXPECT_TRUE(scheduler.abort(1));
  EXPECT_EQ(pool.num_free(), 16 - 2);
  EXPECT_FALSE(scheduler.abort(1));
  // Committing the step built before the abort skips the aborted request.
  const std::vector<int32_t> sampled{fake_sample(1, 9), fake_sample(2, 4)};
  EXPECT_TRUE(scheduler.commit(s, sampled).empty());
  EXPECT_EQ(scheduler.num_running(), 1);
  EXPECT_TRUE(scheduler.abort(2));
  EXPECT_FALSE(scheduler.has_unfinished());
  EXPECT_EQ(scheduler.block_manager().num_available_blocks(), 16);
}

TEST(Scheduler, RejectsBadRequests) {
  KvBlockPool pool(4);
  Scheduler scheduler(config(64, 64), pool);
  EXPECT_FALSE(scheduler.add({1, {}, 4, {}}).ok());
  EXPECT_FALSE(scheduler.add({1, iota_tokens(0, 64), 4, {}}).ok());
  EXPECT_FALSE(scheduler.add({1, iota_tokens(0, 4), 0, {}}).ok());
  EXPECT_FALSE(scheduler.add({1, iota_tokens(0, 10), 20, {}}).ok()) << "29 tokens cannot fit 16 slots";
  EXPECT_TRUE(scheduler.add({1, iota_tokens(0, 10), 7, {}}).ok());
  EXPECT_FALSE(scheduler.add({1, iota_tokens(0, 4), 2, {}}).ok()) << "duplicate id";
}

TEST(Scheduler, EosAndContextEndFinish) {
  KvBlockPool pool(32);
  Scheduler scheduler(config(64, 12), pool);
  ASSERT_TRUE(scheduler.add({1, iota_tokens(0, 4), 100, {fake_sample(1, 5)}}).ok());
  ASSERT_TRUE(scheduler.add({2, iota_tokens(0, 4), 100, {}}).ok());
  std::map<int64_t, FinishedRequest> done;
  for (int i = 0; i < 50 && scheduler.has_unfinished(); ++i) {
    SchedulerStep s;
    scheduler.schedule(s);
    std::vector<int32_t> sampled;
    for (size_t r = 0; r < s.logit_requests.size(); ++r)
      sampled.push_back(fake_sample(s.logit_requests[r], s.batch.positions[s.batch.logit_rows[r]]));
    for (FinishedRequest& f : scheduler.commit(s, sampled)) done[f.id] = f;
  }
  EXPECT_EQ(done[1].finish_reason, "eos");
  EXPECT_EQ(done[1].output_ids, alone(1, 4, 2)) << "EOS is not output";
  EXPECT_EQ(done[2].finish_reason, "context");
  EXPECT_EQ(done[2].output_ids.size(), 8u) << "4 prompt + 8 generated = max_seq_len 12";
}

TEST(Scheduler, ManyRequestsUnderPressureMatchRunningAlone) {
  KvBlockPool pool(12);
  SchedulerConfig c = config(10);
  c.max_logit_rows = 3;
  Scheduler scheduler(c, pool);
  Driver d{scheduler, 10};
  const int64_t lengths[] = {3, 17, 9, 1, 25, 6, 12, 4};
  const int32_t max_new[] = {9, 4, 20, 12, 3, 15, 7, 1};
  for (int64_t i = 0; i < 8; ++i) d.add(i, iota_tokens(static_cast<int32_t>(i * 40), lengths[i]), max_new[i]);
  d.run();
  EXPECT_GT(scheduler.num_preemptions(), 0) << "the pool is meant to be too small for all at once";
  for (int64_t i = 0; i < 8; ++i) {
    EXPECT_EQ(d.outputs[i], alone(i, lengths[i], max_new[i])) << "request " << i;
    EXPECT_EQ(d.sampled_at[i], iota_tokens(static_cast<int32_t>(lengths[i] - 1), max_new[i]))
        << "request " << i;
  }
  EXPECT_EQ(scheduler.block_manager().num_available_blocks(), pool.num_blocks());
  scheduler.block_manager().reset_prefix_cache();
  EXPECT_EQ(pool.num_free(), pool.num_blocks());
}

// Static batching (the benchmark baseline): a request that arrives while a batch runs waits for the
// whole batch to finish, yet every output is the same; continuous batching takes fewer steps.
TEST(Scheduler, StaticBatchingAdmitsOnlyBetweenBatches) {
  const int64_t lengths[] = {3, 9, 5, 2, 7, 4};
  const int32_t max_new[] = {2, 12, 3, 6, 1, 9};
  int64_t steps[2] = {};
  for (const bool static_batching : {false, true}) {
    KvBlockPool pool(64);
    SchedulerConfig c = config(16);
    c.max_running = 3;
    c.static_batching = static_batching;
    Scheduler scheduler(c, pool);
    Driver d{scheduler, 16};
    for (int64_t i = 0; i < 6; ++i)
      d.add(i, iota_tokens(static_cast<int32_t>(i * 20), lengths[i]), max_new[i]);
    std::set<int64_t> batch;  // requests admitted since the running set was last empty
    while (scheduler.has_unfinished()) {
      const bool was_empty = scheduler.num_running() == 0;
      const SchedulerStep s = d.step();
      ASSERT_FALSE(s.empty());
      if (was_empty) batch.clear();
      for (const ScheduledSequence& q : s.sequences) {
        const bool fresh = batch.insert(q.request_id).second;
        if (static_batching && fresh)
          ASSERT_TRUE(was_empty) << "request " << q.request_id << " joined a running batch";
      }
    }
    for (int64_t i = 0; i < 6; ++i)
      EXPECT_EQ(d.outputs[i], alone(i, lengths[i], max_new[i])) << "request " << i;
    EXPECT_EQ(scheduler.block_manager().num_available_blocks(), pool.num_blocks());
    steps[static_batching] = d.steps;
  }
  EXPECT_LT(steps[0], steps[1]) << "continuous batching should need fewer steps";
}

// Padded static batching (HF generate()'s way): a finished request's row keeps computing until the
// batch's longest request finishes; outputs are still each request's own, returned at its finish.
TEST(Scheduler, PaddedStaticBatchKeepsFinishedRowsUntilTheBatchEnds) {
  KvBlockPool pool(64);
  SchedulerConfig c = config(16);
  c.max_running = 3;
  c.static_batching = true;
  c.pad_finished_rows = true;
  Scheduler scheduler(c, pool);
  Driver d{scheduler, 16};
  const int64_t lengths[] = {3, 5, 2, 4};
  const int32_t max_new[] = {2, 9, 4, 3};
  for (int64_t i = 0; i < 4; ++i) d.add(i, iota_tokens(static_cast<int32_t>(i * 20), lengths[i]), max_new[i]);
  // The first batch is requests 0-2: every step of it has three rows until request 1 (9 tokens) ends.
  int64_t batch_steps = 0;
  while (!d.outputs.count(1)) {
    const SchedulerStep s = d.step();
    ASSERT_EQ(s.sequences.size(), 3u) << "step " << batch_steps;
    for (const ScheduledSequence& q : s.sequences) ASSERT_NE(q.request_id, 3) << "request 3 joined the batch";
    ++batch_steps;
  }
  EXPECT_EQ(d.outputs[0], alone(0, lengths[0], max_new[0])) << "finished rows still return their own output";
  EXPECT_EQ(d.outputs[2], alone(2, lengths[2], max_new[2]));
  EXPECT_EQ(scheduler.num_running(), 0) << "the padding rows go with the batch's last request";
  d.run();
  EXPECT_EQ(d.outputs[3], alone(3, lengths[3], max_new[3]));
  EXPECT_EQ(scheduler.block_manager().num_available_blocks(), pool.num_blocks());
}

TEST(PrefixCache, SharedSystemPromptIsComputedOnce) {
  KvBlockPool pool(32);
  Scheduler scheduler(config(64), pool);
  Driver d{scheduler, 64};
  std::vector<int32_t> system = iota_tokens(500, 3 * kBlock);  // 3 full blocks
  std::vector<int32_t> a = system, b = system;
  a.insert(a.end(), {1, 2});
  b.insert(b.end(), {7, 8, 9});
  d.add(1, a, 10);
  d.step();  // prefill of a: its 3 full blocks are hashed at commit
  const std::vector<int32_t> a_blocks(scheduler.block_manager().blocks(1).begin(),
                                      scheduler.block_manager().blocks(1).end());
  d.add(2, b, 10);
  const SchedulerStep s = d.step();
  ASSERT_EQ(s.sequences.size(), 2u);
  EXPECT_EQ(s.sequences[1].request_id, 2);
  EXPECT_EQ(s.sequences[1].first_position, 12) << "only the uncached suffix is computed";
  EXPECT_EQ(s.sequences[1].num_tokens, 3);
  const auto b_blocks = scheduler.block_manager().blocks(2);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(b_blocks[i], a_blocks[i]);
    EXPECT_EQ(scheduler.block_manager().ref_count(a_blocks[i]), 2);
  }
  EXPECT_NE(b_blocks[3], a_blocks[3]) << "the partial tail block is private";
  EXPECT_EQ(scheduler.block_manager().stats().hit_tokens, 12);
  EXPECT_EQ(scheduler.block_manager().stats().query_tokens, 14 + 15);
  d.run();
  EXPECT_EQ(d.outputs[1], alone(1, 14, 10));
  EXPECT_EQ(d.outputs[2], alone(2, 15, 10));
  // Finished: the cached blocks stay (evictable), and count as available.
  EXPECT_GE(scheduler.block_manager().num_cached_blocks(), 3);
  EXPECT_EQ(scheduler.block_manager().num_available_blocks(), pool.num_blocks());
  // A third request with the same system prompt hits after both are gone.
  d.add(3, b, 2);
  d.run();
  EXPECT_EQ(scheduler.block_manager().stats().hit_tokens, 12 + 12);
  EXPECT_EQ(d.outputs[3], alone(3, 15, 2));
}

TEST(PrefixCache, EvictsLeastRecentlyUsedTailFirstUnderPressure) {
  KvBlockPool pool(12);
  SchedulerConfig c = config(64);
  Scheduler scheduler(c, pool);
  Driver d{scheduler, 64};
  const std::vector<int32_t> x = iota_tokens(100, 3 * kBlock + 1), y = iota_tokens(200, 3 * kBlock + 1);
  d.add(1, x, 1);
  d.run();
  d.add(2, y, 1);
  d.run();
  BlockManager& blocks = scheduler.block_manager();
  ASSERT_EQ(blocks.find_cached_prefix(x, 100).size(), 3u);
  ASSERT_EQ(blocks.find_cached_prefix(y, 100).size(), 3u);
  ASSERT_EQ(pool.num_free(), 12 - 6);
  // A request needing every free block plus one: evicts x's last block (oldest, tail first).
  d.add(3, iota_tokens(300, 7 * kBlock - 1), 1);
  d.run();
  EXPECT_EQ(blocks.stats().evictions, 1);
  EXPECT_EQ(blocks.find_cached_prefix(x, 100).size(), 2u);
  EXPECT_EQ(blocks.find_cached_prefix(y, 100).size(), 3u);
  EXPECT_EQ(blocks.num_available_blocks(), pool.num_blocks());
  blocks.reset_prefix_cache();
  EXPECT_EQ(blocks.num_cached_blocks(), 0);
  EXPECT_EQ(pool.num_free(), pool.num_blocks());
}

}  // namespace
}  // namespace kiln
