#include "runtime/scheduler.h"

#include <algorithm>
#include <cassert>

namespace kiln {

Scheduler::Scheduler(const SchedulerConfig& config, KvBlockPool& pool)
    : config_(config),
      blocks_(pool, config.block_size, config.prefix_caching),
      max_blocks_per_seq_(
          static_cast<int32_t>((config.max_seq_len + config.block_size - 1) / config.block_size)) {
  assert(config.max_seq_len > 0 && config.max_tokens_per_step > 0 && config.max_logit_rows > 0 &&
         config.max_running > 0);
}

Status Scheduler::add(SchedulerRequest request) {
  const int64_t prompt_len = static_cast<int64_t>(request.prompt_ids.size());
  if (prompt_len == 0) return make_error("request {}: empty prompt: give at least one token", request.id);
  if (prompt_len >= config_.max_seq_len) {
    return make_error("request {}: prompt of {} tokens does not fit the max sequence length {}", request.id,
                      prompt_len, config_.max_seq_len);
  }
  if (request.max_new_tokens < 1)
    return make_error("request {}: max_new_tokens must be >= 1, got {}", request.id, request.max_new_tokens);
  if (sequences_.count(request.id))
    return make_error("request {}: id already in use by an unfinished request", request.id);
  // The most KV a request can hold: its last sampled token is never fed back.
  const int64_t max_len = std::min<int64_t>(prompt_len + request.max_new_tokens - 1, config_.max_seq_len);
  if (max_len > blocks_.num_blocks() * config_.block_size) {
    return make_error("request {}: needs KV for {} tokens, more than the {} blocks of {} tokens in the cache",
                      request.id, max_len, blocks_.num_blocks(), config_.block_size);
  }
  auto seq = std::make_unique<Sequence>();
  seq->id = request.id;
  seq->tokens = std::move(request.prompt_ids);
  seq->prompt_len = prompt_len;
  seq->max_new_tokens = request.max_new_tokens;
  seq->eos_token_ids = std::move(request.eos_token_ids);
  waiting_.push_back(seq.get());
  sequences_.emplace(seq->id, std::move(seq));
  return Status::Ok();
}

void Scheduler::preempt(Sequence& seq) {
  if (seq.padding) {  // nothing to recompute: a padding row just goes
    abort(seq.id);
    return;
  }
  // Recompute rather than swap (vLLM v1): the KV is rebuilt from tokens, most of it often still cached.
  blocks_.free(seq.id);
  seq.num_computed = 0;
  running_.erase(std::find(running_.begin(), running_.end(), &seq));
  waiting_.push_front(&seq);
  ++num_preemptions_;
}

bool Scheduler::reserve_decode_block(Sequence& seq, SchedulerStep& step) {
  const int64_t length = static_cast<int64_t>(seq.tokens.size());
  while (!blocks_.allocate(seq.id, length)) {
    Sequence* victim = running_.back();
    step.preempted.push_back(victim->id);
    preempt(*victim);
    if (victim == &seq) return false;
  }
  return true;
}

void Scheduler::add_to_step(Sequence& seq, int64_t num_tokens, SchedulerStep& step) {
  Batch& batch = step.batch;
  const int32_t row = static_cast<int32_t>(step.sequences.size());
  const int64_t first = seq.num_computed;
  for (int64_t p = first; p < first + num_tokens; ++p) {
    batch.tokens.push_back(seq.tokens[p]);
    batch.positions.push_back(static_cast<int32_t>(p));
    batch.token_seq.push_back(row);
  }
  const std::span<const int32_t> table = blocks_.blocks(seq.id);
  assert(static_cast<int64_t>(table.size()) * config_.block_size >= first + num_tokens);
  batch.block_tables.insert(batch.block_tables.end(), table.begin(), table.end());
  batch.block_tables.resize(batch.block_tables.size() + (max_blocks_per_seq_ - table.size()), -1);
  const bool samples = first + num_tokens == static_cast<int64_t>(seq.tokens.size());
  if (samples) {
    batch.logit_rows.push_back(batch.num_tokens() - 1);
    step.logit_requests.push_back(seq.id);
  }
  step.sequences.push_back({seq.id, first, static_cast<int32_t>(num_tokens), samples});
}

bool Scheduler::schedule_chunk(Sequence& seq, bool waiting, int64_t& budget, SchedulerStep& step) {
  const int64_t length = static_cast<int64_t>(seq.tokens.size());
  std::vector<int32_t> cached;
  if (waiting) {
    // At least the last token is computed: its logits are needed.
    cached = blocks_.find_cached_prefix(seq.tokens, length - 1);
    seq.num_computed = static_cast<int64_t>(cached.size()) * config_.block_size;
  }
  const int64_t remaining = length - seq.num_computed;
  int64_t chunk = std::min(remaining, budget);
  if (chunk == remaining && static_cast<int64_t>(step.logit_requests.size()) >= config_.max_logit_rows)
    --chunk;
  chunk = std::min(chunk, blocks_.max_tokens_reachable(seq.id, cached) - seq.num_computed);
  if (chunk <= 0) {
    if (waiting) seq.num_computed = 0;
    return false;
  }
  const bool ok = blocks_.allocate(seq.id, seq.num_computed + chunk, cached, waiting ? length : 0);
  assert(ok);
  (void)ok;
  if (waiting) {
    waiting_.pop_front();
    running_.push_back(&seq);
  }
  add_to_step(seq, chunk, step);
  budget -= chunk;
  step.num_prefill_tokens += chunk;
  return true;
}

void Scheduler::schedule(SchedulerStep& step) {
  step.batch.clear();
  step.batch.max_blocks_per_seq = max_blocks_per_seq_;
  step.sequences.clear();
  step.logit_requests.clear();
  step.preempted.clear();
  step.num_decode_tokens = step.num_prefill_tokens = 0;
  int64_t budget = config_.max_tokens_per_step;

  // 1. One decode token for each running sequence whose prompt is done, oldest first; the newest
  //    give way (are preempted) when blocks run out. running_ shrinks from the back only, so the
  //    sequences already scheduled in this loop are never the ones preempted.
  for (size_t i = 0; i < running_.size() && budget > 0; ++i) {
    Sequence& seq = *running_[i];
    if (static_cast<int64_t>(seq.tokens.size()) - seq.num_computed != 1) continue;
    if (static_cast<int64_t>(step.logit_requests.size()) >= config_.max_logit_rows) break;
    if (!reserve_decode_block(seq, step)) break;  // seq itself was the newest: nothing after it remains
    add_to_step(seq, 1, step);
    --budget;
    ++step.num_decode_tokens;
  }
  // 2. Chunks of prompts being prefilled, in admission order, then admission from the waiting queue
  //    (FCFS: stop at the first request that does not fit, so later ones cannot starve it).
  for (size_t i = 0; i < running_.size() && budget > 0; ++i) {
    Sequence& seq = *running_[i];
    if (static_cast<int64_t>(seq.tokens.size()) - seq.num_computed <= 1) continue;
    if (!schedule_chunk(seq, false, budget, step)) break;
  }
  //    No admission in a step that preempted: the blocks just freed go to the running sequences.
  //    Static batching (the baseline continuous batching is measured against) admits only into an
  //    open batch: one opens when nothing runs and closes once it is full, the queue is empty, or a
  //    request did not fit; its sequences then run to the end before the next batch is admitted.
  if (running_.empty()) batch_open_ = true;
  if (config_.static_batching && !batch_open_) return;
  bool stalled = false;
  while (budget > 0 && step.preempted.empty() && !waiting_.empty() &&
         static_cast<int64_t>(running_.size()) < config_.max_running) {
    if (!schedule_chunk(*waiting_.front(), true, budget, step)) {
      stalled = true;
      break;
    }
  }
  if (stalled || waiting_.empty() || static_cast<int64_t>(running_.size()) >= config_.max_running)
    batch_open_ = false;
}

namespace {
// A request that reached the context's end has no position left to pad with.
bool done_reason_pads(const std::string& reason) { return reason != "context"; }
}  // namespace

std::vector<FinishedRequest> Scheduler::commit(const SchedulerStep& step,
                                               std::span<const int32_t> sampled_ids) {
  assert(sampled_ids.size() == step.logit_requests.size());
  std::vector<FinishedRequest> finished;
  size_t row = 0;
  for (const ScheduledSequence& scheduled : step.sequences) {
    const size_t this_row = scheduled.samples ? row++ : row;
    const auto it = sequences_.find(scheduled.request_id);
    if (it == sequences_.end()) continue;  // aborted since
    Sequence& seq = *it->second;
    if (seq.num_computed != scheduled.first_position) continue;  // stale step
    seq.num_computed += scheduled.num_tokens;
    blocks_.cache_full_blocks(seq.id, seq.tokens, seq.num_computed);
    if (!scheduled.samples) continue;
    const int32_t next = sampled_ids[this_row];
    if (seq.padding) {  // computes on, outputs nothing; ends at the context's end
      seq.tokens.push_back(next);
      if (static_cast<int64_t>(seq.tokens.size()) >= config_.max_seq_len) abort(seq.id);
      continue;
    }
    const int64_t generated = static_cast<int64_t>(seq.tokens.size()) - seq.prompt_len;
    std::string reason;
    if (std::find(seq.eos_token_ids.begin(), seq.eos_token_ids.end(), next) != seq.eos_token_ids.end()) {
      reason = "eos";
    } else {
      seq.tokens.push_back(next);
      if (generated + 1 >= seq.max_new_tokens) {
        reason = "length";
      } else if (static_cast<int64_t>(seq.tokens.size()) >= config_.max_seq_len) {
        reason = "context";
      }
    }
    if (reason.empty()) continue;
    FinishedRequest done;
    done.id = seq.id;
    done.output_ids.assign(seq.tokens.begin() + seq.prompt_len, seq.tokens.end());
    const bool pad = config_.static_batching && config_.pad_finished_rows && done_reason_pads(reason);
    done.finish_reason = std::move(reason);
    finished.push_back(std::move(done));
    if (pad) {
      seq.padding = true;
      if (seq.tokens.size() == static_cast<size_t>(seq.num_computed)) seq.tokens.push_back(next);  // EOS
    } else {
      abort(seq.id);
    }
  }
  release_padding_if_batch_done();
  return finished;
}

void Scheduler::release_padding_if_batch_done() {
  if (!config_.pad_finished_rows) return;
  for (const Sequence* seq : running_) {
    if (!seq->padding) return;
  }
  while (!running_.empty()) abort(running_.back()->id);
}

bool Scheduler::abort(int64_t id) {
  const auto it = sequences_.find(id);
  if (it == sequences_.end()) return false;
  Sequence* seq = it->second.get();
  blocks_.free(id);
  if (const auto r = std::find(running_.begin(), running_.end(), seq); r != running_.end()) running_.erase(r);
  if (const auto w = std::find(waiting_.begin(), waiting_.end(), seq); w != waiting_.end()) waiting_.erase(w);
  sequences_.erase(it);
  return true;
}

}  // namespace kiln
