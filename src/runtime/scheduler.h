// Continuous batching with chunked prefill and prefix caching (vLLM v1 core/sched/scheduler.py;
// Orca, OSDI'22, for iteration-level scheduling; Sarathi-Serve, OSDI'24, for chunked prefill).
//
// The scheduler is pure bookkeeping: it never runs a model. Each schedule() builds one step (a
// Batch) under a token budget; the caller runs Backend::forward on it, samples one id per logit row,
// and hands the ids to commit(), which appends them and finishes sequences (max tokens, EOS, context
// end). Stop strings and other caller-side conditions end a request with abort().
//
// Two policies, kept apart as TensorRT-LLM splits its capacity scheduler from its micro-batch
// scheduler:
//  - KV capacity (which sequences may hold blocks): a request is admitted only when blocks for its
//    next chunk are available; when a running sequence cannot get a block for its next token, the
//    most recently admitted sequence is preempted (blocks freed, requeued at the front of the
//    waiting queue, recomputed later from its prompt and the tokens it had produced).
//  - token packing (what runs this step): one decode token for every running sequence first, then
//    chunks of partially prefilled and waiting prompts, FCFS, while the budget lasts.
//
// A sequence is its tokens (prompt, then output) and how many of them have KV in the cache
// (num_computed); a step computes tokens [num_computed, num_computed + n). A logit row is requested
// only when the step reaches the sequence's last token, so a prompt chunk that ends mid-prompt
// samples nothing.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "backend/backend.h"
#include "common/error.h"
#include "runtime/block_manager.h"
#include "runtime/kv_block_pool.h"

namespace kiln {

struct SchedulerConfig {
  int64_t block_size = 16;            // the backend's kv_geometry().block_size
  int64_t max_seq_len = 0;            // the engine's; positions stay below it
  int64_t max_tokens_per_step = 512;  // token budget of one step (the backend's max_tokens_per_step)
  int64_t max_logit_rows = 64;        // sampled rows in one step (the backend's max_logit_rows)
  int64_t max_running = 64;           // sequences holding KV blocks at once (rows of block_tables)
  bool prefix_caching = true;
  // Baseline for benchmarks: admit requests in batches and admit no more until the whole batch has
  // finished (static batching), instead of joining the running batch at any step (continuous).
  bool static_batching = false;
  // With static_batching: a finished request keeps its row and computes (discarded) tokens until the
  // batch's last request finishes, as engines without per-request scheduling do (HF generate() and
  // FasterTransformer pad finished rows). Its output is returned when it finishes, not at batch end.
  bool pad_finished_rows = false;
};

struct SchedulerRequest {
  int64_t id = 0;  // caller's, unique among unfinished requests
  std::vector<int32_t> prompt_ids;
  int32_t max_new_tokens = 128;        // >= 1
  std::vector<int32_t> eos_token_ids;  // sampling one ends the request (the id is not output); empty: never
};

// The tokens one sequence contributes to a step: [first_position, first_position + num_tokens).
struct ScheduledSequence {
  int64_t request_id = 0;
  int64_t first_position = 0;
  int32_t num_tokens = 0;
  bool samples = false;  // the chunk ends at the sequence's last token: one logit row
};

struct SchedulerStep {
  Batch batch;                               // row s of block_tables is sequences[s]
  std::vector<ScheduledSequence> sequences;  // [num_seqs]
  std::vector<int64_t> logit_requests;       // [R] request of each of batch.logit_rows
  std::vector<int64_t> preempted;            // requests preempted while building this step
  int64_t num_decode_tokens = 0;
  int64_t num_prefill_tokens = 0;

  bool empty() const { return sequences.empty(); }
};

struct FinishedRequest {
  int64_t id = 0;
  std::vector<int32_t> output_ids;  // EOS excluded
  std::string finish_reason;        // "length", "eos" or "context"
};

class Scheduler {
 public:
  // pool must outlive the scheduler; the scheduler takes its blocks only through its BlockManager.
  Scheduler(const SchedulerConfig& config, KvBlockPool& pool);

  // Queues a request. Errors: empty or too long prompt, max_new_tokens < 1, a duplicate id, or a
  // request that could not fit the whole pool even alone.
  Status add(SchedulerRequest request);

  // Builds the next step into `step` (its vectors are reused). An empty step means nothing can run.
  void schedule(SchedulerStep& step);

  // Records the step as computed and sampled_ids[r] as the token sampled from logit row r
  // ([step.logit_requests.size()]). Returns the requests that finished; their blocks are released.
  // Sequences aborted since the step was built are skipped.
  std::vector<FinishedRequest> commit(const SchedulerStep& step, std::span<const int32_t> sampled_ids);

  // Ends a request now and frees its blocks; false when no unfinished request has this id.
  bool abort(int64_t id);

  bool has_unfinished() const { return !sequences_.empty(); }
  int64_t num_running() const { return static_cast<int64_t>(running_.size()); }
  int64_t num_waiting() const { return static_cast<int64_t>(waiting_.size()); }
  int64_t num_preemptions() const { return num_preemptions_; }
  const BlockManager& block_manager() const { return blocks_; }
  BlockManager& block_manager() { return blocks_; }

 private:
  struct Sequence {
    int64_t id = 0;
    std::vector<int32_t> tokens;  // prompt then output
    int64_t prompt_len = 0;
    int32_t max_new_tokens = 0;
    std::vector<int32_t> eos_token_ids;
    int64_t num_computed = 0;  // tokens whose KV is in this sequence's blocks
    bool padding = false;      // finished, kept computing until its static batch ends
  };

  // KV capacity policy.
  bool reserve_decode_block(Sequence& seq,
                            SchedulerStep& step);  // preempts until seq fits or is itself preempted
  void preempt(Sequence& seq);
  // Static batching with padded rows: frees the padding rows once no real request runs.
  void release_padding_if_batch_done();
  // Token packing.
  void add_to_step(Sequence& seq, int64_t num_tokens, SchedulerStep& step);
  // Schedules a chunk of a prefilling sequence (admitting it when waiting); false when nothing fit.
  bool schedule_chunk(Sequence& seq, bool waiting, int64_t& budget, SchedulerStep& step);

  SchedulerConfig config_;
  BlockManager blocks_;
  int32_t max_blocks_per_seq_;
  std::unordered_map<int64_t, std::unique_ptr<Sequence>> sequences_;
  std::vector<Sequence*> running_;  // admission order
  std::deque<Sequence*> waiting_;   // FCFS; preempted sequences go to the front
  int64_t num_preemptions_ = 0;
  bool batch_open_ = true;  // static batching: the current batch still admits requests
};

}  // namespace kiln
