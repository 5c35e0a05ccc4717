#include "server/engine_worker.h"

#include <algorithm>
#include <span>

#include "runtime/stop_strings.h"
#include "server/logit_processing.h"

namespace kiln {

using Clock = std::chrono::steady_clock;

namespace {
double seconds_between(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}
}  // namespace

struct EngineWorker::ActiveJob {
  std::shared_ptr<Job> job;
  std::vector<int64_t> sequence_ids;  // [choices]; -1 once finished
  int remaining = 0;
  bool first_token_seen = false;
};

struct EngineWorker::ActiveSequence {
  ActiveSequence(int64_t vocab, SequenceSpec s) : spec(std::move(s)), sampler(vocab, spec.sampling) {}
  int64_t id = 0;
  ActiveJob* job = nullptr;
  int choice = 0;
  SequenceSpec spec;
  Sampler sampler;
  std::vector<int32_t> tokens;  // prompt then output (the repetition penalty's history)
  int64_t prompt_len = 0;
  std::optional<StreamingDetokenizer> detokenizer;
  StopStringFilter filter;
  size_t emitted = 0;             // bytes of filter.text() already sent
  int32_t previous_text_id = -1;  // last non-special output token: logprob token texts follow it
  bool stop_hit = false;
  Clock::time_point last_token_time;
  bool has_token = false;
  // Logprobs of this step's row, when asked for.
  double log_z = 0.0;
  float chosen_logprob = 0.0f;
  std::vector<std::pair<int32_t, float>> top;

  int64_t num_output() const { return static_cast<int64_t>(tokens.size()) - prompt_len; }
};

Result<std::shared_ptr<EngineWorker>> EngineWorker::load(std::string name, const std::string& engine_path,
                                                         const RuntimeOptions& runtime,
                                                         const WorkerOptions& options) {
  KILN_ASSIGN(std::unique_ptr<Model> model, Model::load(engine_path, runtime));
  return std::make_shared<EngineWorker>(std::move(name), std::move(model), options);
}

EngineWorker::EngineWorker(std::string name, std::unique_ptr<Model> model, const WorkerOptions& options)
    : name_(std::move(name)), model_(std::move(model)), options_(options) {
  Backend& backend = model_->backend();
  SchedulerConfig config;
  config.block_size = backend.kv_geometry().block_size;
  config.max_seq_len = model_->info().max_seq_len;
  config.max_tokens_per_step = backend.max_tokens_per_step();
  config.max_logit_rows = backend.max_logit_rows();
  config.max_running = std::max<int64_t>(1, model_->info().max_batch);
  config.prefix_caching = options.prefix_caching;
  config.static_batching = options.static_batching;
  config.pad_finished_rows = options.pad_finished_rows;
  scheduler_ = std::make_unique<Scheduler>(config, model_->kv_pool());
  seen_.assign(static_cast<size_t>(backend.vocab_size()), 0);
  raw_row_.resize(static_cast<size_t>(backend.vocab_size()));
  logits_.reserve(static_cast<size_t>(config.max_logit_rows * backend.vocab_size()));
  ids_.reserve(static_cast<size_t>(config.max_logit_rows));
  publish_gauges();
  thread_ = std::thread([this] { run(); });
}

EngineWorker::~EngineWorker() { stop(); }

const ChatTemplate* EngineWorker::chat_template() const {
  if (chat_template_override_) return &*chat_template_override_;
  return model_->chat_template();
}

ModelLimits EngineWorker::limits() const {
  const KvGeometry kv = model_->backend().kv_geometry();
  return ModelLimits{model_->info().vocab_size, model_->info().max_seq_len, kv.num_blocks * kv.block_size};
}

EngineWorker::Admission EngineWorker::submit(std::shared_ptr<Job> job) {
  {
    std::lock_guard<std::mutex> lock(inbox_mutex_);
    if (stopping_) return Admission::Stopped;
    if (active_requests_.load() >= options_.max_queue) return Admission::QueueFull;
    ++active_requests_;
    inbox_.push_back({Command::Kind::Submit, std::move(job), nullptr, {}});
  }
  inbox_cv_.notify_one();
  return Admission::Accepted;
}

void EngineWorker::cancel(const std::shared_ptr<RequestStream>& stream) {
  stream->cancel();
  {
    std::lock_guard<std::mutex> lock(inbox_mutex_);
    inbox_.push_back({Command::Kind::Cancel, nullptr, stream, {}});
  }
  inbox_cv_.notify_one();
}

void EngineWorker::abort_all(std::string reason) {
  {
    std::lock_guard<std::mutex> lock(inbox_mutex_);
    inbox_.push_back({Command::Kind::AbortAll, nullptr, nullptr, std::move(reason)});
  }
  inbox_cv_.notify_one();
}

void EngineWorker::stop() {
  {
    std::lock_guard<std::mutex> lock(inbox_mutex_);
    if (!stopping_) inbox_.push_back({Command::Kind::Stop, nullptr, nullptr, {}});
    stopping_ = true;
  }
  inbox_cv_.notify_one();
  if (thread_.joinable()) thread_.join();
}

void EngineWorker::run() {
  for (bool running = true; running;) {
    {
      std::unique_lock<std::mutex> lock(inbox_mutex_);
      // Idle: sleep until a request or a command arrives (no polling).
      inbox_cv_.wait(lock, [&] { return !inbox_.empty() || scheduler_->has_unfinished(); });
      std::swap(commands_, inbox_);
    }
    for (Command& command : commands_) {
      if (command.kind == Command::Kind::Stop) running = false;
      apply(command);
    }
    commands_.clear();
    if (running && scheduler_->has_unfinished()) step();
    publish_gauges();
  }
}

void EngineWorker::apply(Command& command) {
  switch (command.kind) {
    case Command::Kind::Submit:
      admit(std::move(command.job));
      break;
    case Command::Kind::Cancel: {
      const auto it = jobs_.find(command.stream.get());
      if (it != jobs_.end()) end_job(*it->second, RequestOutcome::Cancelled);
      break;
    }
    case Command::Kind::AbortAll:
    case Command::Kind::Stop: {
      const std::string reason =
          command.kind == Command::Kind::Stop ? "the server is shutting down" : command.reason;
      while (!jobs_.empty()) fail_job(*jobs_.begin()->second, reason, RequestOutcome::Cancelled);
      break;
    }
  }
}

void EngineWorker::admit(std::shared_ptr<Job> job) {
  RequestStream* stream = job->stream.get();
  auto active = std::make_unique<ActiveJob>();
  active->job = job;
  ActiveJob& state = *active;
  jobs_.emplace(stream, std::move(active));
  if (stream->cancelled()) {  // the client left while the request sat in the inbox
    end_job(state, RequestOutcome::Cancelled);
    return;
  }
  metrics_.prompt_tokens += static_cast<uint64_t>(job->prompt_tokens);
  const int64_t vocab = model_->backend().vocab_size();
  for (size_t c = 0; c < job->sequences.size(); ++c) {
    SequenceSpec& spec = job->sequences[c];
    const int64_t id = next_sequence_id_++;
    SchedulerRequest request{id, spec.prompt_ids, spec.max_tokens,
                             spec.ignore_eos ? std::vector<int32_t>{} : model_->info().eos_token_ids};
    if (Status added = scheduler_->add(std::move(request)); !added.ok()) {
      fail_job(state, added.error().message, RequestOutcome::Error);
      return;
    }
    auto seq = std::make_unique<ActiveSequence>(vocab, std::move(spec));
    seq->id = id;
    seq->job = &state;
    seq->choice = static_cast<int>(c);
    seq->prompt_len = static_cast<int64_t>(seq->spec.prompt_ids.size());
    seq->tokens.reserve(seq->prompt_len + seq->spec.max_tokens);
    seq->tokens.assign(seq->spec.prompt_ids.begin(), seq->spec.prompt_ids.end());
    if (model_->tokenizer()) seq->detokenizer.emplace(*model_->tokenizer());
    seq->filter = StopStringFilter(seq->spec.stop);
    state.sequence_ids.push_back(id);
    ++state.remaining;
    sequences_.emplace(id, std::move(seq));
  }
}

int32_t EngineWorker::sample_row(ActiveSequence& seq, float* logits) {
  const int64_t vocab = model_->backend().vocab_size();
  const SequenceSpec& spec = seq.spec;
  if (spec.logprobs >= 0) {
    // Log-probabilities of the model's own distribution, before bias, penalties and temperature
    // (vLLM's raw logprobs); the row is kept because those edit it in place.
    std::copy(logits, logits + vocab, raw_row_.begin());
    seq.log_z = top_logprobs(logits, vocab, spec.logprobs, seq.top);
  }
  apply_logit_bias(logits, spec.logit_bias);
  const std::span<const int32_t> output(seq.tokens.data() + seq.prompt_len,
                                        seq.tokens.size() - seq.prompt_len);
  apply_presence_frequency_penalties(logits, output, spec.presence_penalty, spec.frequency_penalty, seen_);
  const int32_t id = seq.sampler.sample(logits, seq.tokens);
  if (spec.logprobs >= 0) seq.chosen_logprob = static_cast<float>(raw_row_[id] - seq.log_z);
  return id;
}

void EngineWorker::step() {
  Backend& backend = model_->backend();
  const int64_t vocab = backend.vocab_size();
  scheduler_->schedule(step_);
  if (step_.empty()) {
    // Nothing fits this step (should not happen: the scheduler always runs something while it has
    // unfinished requests); wait a little for a command instead of spinning.
    std::unique_lock<std::mutex> lock(inbox_mutex_);
    inbox_cv_.wait_for(lock, std::chrono::milliseconds(5), [&] { return !inbox_.empty(); });
    return;
  }
  const size_t rows = step_.logit_requests.size();
  ids_.resize(rows);
  bool host_logits = false;
  // A row whose request has finished is a padding row of a static batch (--static-batching=pad): it
  // is computed and its token discarded.
  auto active = [&](size_t r) -> ActiveSequence* {
    const auto it = sequences_.find(step_.logit_requests[r]);
    return it == sequences_.end() ? nullptr : it->second.get();
  };
  for (size_t r = 0; r < rows; ++r)
    host_logits = host_logits || (active(r) && active(r)->spec.needs_host_logits());
  Status status;
  if (!host_logits) {
    // The backend draws every row (CUDA: on the device, only ids come back), from each request's
    // own random stream: the same ids as the host path below for the same seed (sample_row.h).
    row_sampling_.resize(rows);
    for (size_t r = 0; r < rows; ++r)
      row_sampling_[r] = active(r) ? active(r)->sampler.next_row() : RowSampling{};
    status = backend.forward_sample(step_.batch, row_sampling_, ids_.data());
  } else {
    logits_.resize(rows * static_cast<size_t>(vocab));
    status = backend.forward(step_.batch, logits_.data());
    for (size_t r = 0; status.ok() && r < rows; ++r) {
      ids_[r] = active(r) ? sample_row(*active(r), logits_.data() + r * vocab) : 0;
    }
  }
  if (!status.ok()) {
    // A failed step is the engine's fault, not the requests': fail them all and keep serving.
    const std::string message = "engine error: " + status.error().message;
    while (!jobs_.empty()) fail_job(*jobs_.begin()->second, message, RequestOutcome::Error);
    return;
  }
  std::vector<FinishedRequest> finished = scheduler_->commit(step_, ids_);
  const Clock::time_point now = Clock::now();
  for (size_t r = 0; r < rows; ++r) {
    if (ActiveSequence* seq = active(r)) on_token(*seq, ids_[r], now);
  }
  for (FinishedRequest& done : finished) {
    const auto it = sequences_.find(done.id);
    if (it == sequences_.end()) continue;
    finish_sequence(done.id, done.finish_reason == "eos" ? "stop" : "length");
  }
  for (int64_t id : stopped_) {
    if (!sequences_.count(id)) continue;  // also finished by commit in the same step
    scheduler_->abort(id);
    finish_sequence(id, "stop");
  }
  stopped_.clear();
}

std::string EngineWorker::token_text(const ActiveSequence& seq, int32_t id) const {
  const Tokenizer* tokenizer = model_->tokenizer();
  if (!tokenizer || seq.spec.tokens_as_ids) return "token_id:" + std::to_string(id);
  if (tokenizer->is_special(id)) return tokenizer->piece(id);
  return tokenizer->token_bytes(id, seq.previous_text_id);  // the text it adds after the previous token
}

void EngineWorker::on_token(ActiveSequence& seq, int32_t id, Clock::time_point now) {
  ActiveJob& job = *seq.job;
  if (!job.first_token_seen) {
    job.first_token_seen = true;
    metrics_.time_to_first_token.observe(seconds_between(job.job->arrival, now));
  }
  if (seq.has_token) metrics_.inter_token_latency.observe(seconds_between(seq.last_token_time, now));
  seq.has_token = true;
  seq.last_token_time = now;
  const std::vector<int32_t>& eos = model_->info().eos_token_ids;
  if (!seq.spec.ignore_eos && std::find(eos.begin(), eos.end(), id) != eos.end()) return;  // commit ends it
  seq.tokens.push_back(id);
  ++metrics_.generation_tokens;
  TokenLogprob logprob;
  if (seq.spec.logprobs >= 0) {
    logprob.token = token_text(seq, id);
    logprob.logprob = seq.chosen_logprob;
    for (const auto& [alt, lp] : seq.top) logprob.top.emplace_back(token_text(seq, alt), lp);
  }
  if (model_->tokenizer() && !model_->tokenizer()->is_special(id)) seq.previous_text_id = id;
  if (seq.detokenizer && !seq.stop_hit) {
    if (seq.filter.append(seq.detokenizer->push(id))) {
      seq.stop_hit = true;
      stopped_.push_back(seq.id);
    }
  }
  const std::string_view ready = seq.stop_hit ? std::string_view(seq.filter.text()) : seq.filter.releasable();
  const std::string_view delta = ready.substr(std::min(seq.emitted, ready.size()));
  seq.emitted = std::max(seq.emitted, ready.size());
  if (!delta.empty() || seq.spec.logprobs >= 0) {
    job.job->stream->append(seq.choice, delta, seq.spec.logprobs >= 0 ? &logprob : nullptr);
  }
}

void EngineWorker::finish_sequence(int64_t id, std::string reason) {
  const auto it = sequences_.find(id);
  ActiveSequence& seq = *it->second;
  if (seq.stop_hit) {
    reason = "stop";  // a stop string in the same token that reached max_tokens
  } else if (seq.detokenizer && seq.filter.append(seq.detokenizer->flush())) {
    reason = "stop";
  }
  const std::string& text = seq.filter.text();
  if (text.size() > seq.emitted) {
    seq.job->job->stream->append(seq.choice, std::string_view(text).substr(seq.emitted), nullptr);
    seq.emitted = text.size();
  }
  ActiveJob& job = *seq.job;
  job.job->stream->finish(seq.choice, std::move(reason), seq.num_output());
  job.sequence_ids[seq.choice] = -1;
  sequences_.erase(it);
  if (--job.remaining == 0) end_job(job, RequestOutcome::Success);
}

void EngineWorker::end_job(ActiveJob& job, RequestOutcome outcome) {
  for (int64_t id : job.sequence_ids) {
    if (id < 0) continue;
    scheduler_->abort(id);
    sequences_.erase(id);
  }
  metrics_.count(outcome);
  if (outcome == RequestOutcome::Success) {
    metrics_.request_duration.observe(seconds_between(job.job->arrival, Clock::now()));
  }
  --active_requests_;
  jobs_.erase(job.job->stream.get());
}

void EngineWorker::fail_job(ActiveJob& job, const std::string& message, RequestOutcome outcome) {
  job.job->stream->fail(message);
  end_job(job, outcome);
}

void EngineWorker::publish_gauges() {
  const BlockManager& blocks = scheduler_->block_manager();
  metrics_.waiting = scheduler_->num_waiting();
  metrics_.running = scheduler_->num_running();
  metrics_.kv_blocks_total = blocks.num_blocks();
  metrics_.kv_blocks_free = blocks.num_available_blocks();
  const int64_t used = blocks.num_blocks() - blocks.num_available_blocks();
  metrics_.kv_blocks_used = used;
  if (used > metrics_.kv_blocks_used_peak.load())
    metrics_.kv_blocks_used_peak = used;  // only this thread writes
  metrics_.kv_cache_bytes = model_->backend().kv_cache_bytes();
  metrics_.prefix_cache_query_tokens = blocks.stats().query_tokens;
  metrics_.prefix_cache_hit_tokens = blocks.stats().hit_tokens;
  metrics_.preemptions = scheduler_->num_preemptions();
}

}  // namespace kiln
