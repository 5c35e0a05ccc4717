// One loaded model served by one thread. The worker owns the model (its backend and KV block pool)
// and a Scheduler; HTTP threads hand it requests through a mutex-protected inbox and read results
// from each request's RequestStream. Its loop:
//   take new and cancelled requests from the inbox (block there when nothing runs)
//   -> Scheduler::schedule -> Backend::forward_sample (the backend draws every row from each
//      request's own seeded Sampler stream), or, when a row needs its logits on the host (logprobs,
//      penalties, logit_bias), Backend::forward and per row: logprobs, penalties, Sampler::sample
//   -> Scheduler::commit -> per sequence: streaming detokenization, stop strings, text deltas and
//      finish events to the RequestStream.
// Only this thread touches the scheduler, the backend and the per-sequence state; the step vectors
// (batch, logits, ids) are reused, so a step allocates nothing beyond the text it produces.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/error.h"
#include "runtime/model.h"
#include "runtime/sampler.h"
#include "runtime/scheduler.h"
#include "server/metrics.h"
#include "server/openai_request.h"
#include "server/request_stream.h"
#include "tokenizer/chat_template.h"

namespace kiln {

// One choice of a request: what the worker needs to generate it.
struct SequenceSpec {
  std::vector<int32_t> prompt_ids;
  int32_t max_tokens = 16;
  SamplingParams sampling;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  std::vector<std::pair<int32_t, float>> logit_bias;
  std::vector<std::string> stop;
  int32_t logprobs = -1;       // -1: none; else alternatives per token
  bool tokens_as_ids = false;  // logprob tokens as "token_id:ID" instead of their text
  bool ignore_eos = false;

  bool needs_host_logits() const {
    return logprobs >= 0 || presence_penalty != 0.0f || frequency_penalty != 0.0f || !logit_bias.empty() ||
           sampling.repetition_penalty != 1.0f;
  }
};

// One HTTP request: its choices stream to stream's choice of the same index.
struct Job {
  std::vector<SequenceSpec> sequences;
  std::shared_ptr<RequestStream> stream;
  std::chrono::steady_clock::time_point arrival = std::chrono::steady_clock::now();
  int64_t prompt_tokens = 0;  // as usage reports them (each prompt once, whatever n)
};

struct WorkerOptions {
  int64_t max_queue = 64;  // requests waiting or running; submit() refuses more (the server's 503)
  bool prefix_caching = true;
  bool static_batching = false;  // the benchmark baseline (SchedulerConfig::static_batching)
  bool pad_finished_rows = false;  // with static_batching: SchedulerConfig::pad_finished_rows
};

class EngineWorker {
 public:
  // Loads an engine and starts its thread.
  static Result<std::shared_ptr<EngineWorker>> load(std::string name, const std::string& engine_path,
                                                    const RuntimeOptions& runtime,
                                                    const WorkerOptions& options);
  EngineWorker(std::string name, std::unique_ptr<Model> model, const WorkerOptions& options);
  ~EngineWorker();  // stop()
  EngineWorker(const EngineWorker&) = delete;
  EngineWorker& operator=(const EngineWorker&) = delete;

  // Replaces the engine's chat template (kiln serve --chat-template); call before serving.
  void set_chat_template(ChatTemplate chat_template) { chat_template_override_ = std::move(chat_template); }
  // The template chat requests are rendered with: the override, else the engine's; nullptr when none.
  const ChatTemplate* chat_template() const;

  const std::string& name() const { return name_; }
  const ModelInfo& info() const { return model_->info(); }
  const Tokenizer* tokenizer() const { return model_->tokenizer(); }
  ModelLimits limits() const;
  ModelMetrics& metrics() { return metrics_; }
  const ModelMetrics& metrics() const { return metrics_; }

  enum class Admission { Accepted, QueueFull, Stopped };
  // Queues a request unless max_queue requests are waiting or running, or the worker stopped.
  Admission submit(std::shared_ptr<Job> job);
  // The request's reader is gone: its sequences are aborted (KV blocks freed) at the next step.
  void cancel(const std::shared_ptr<RequestStream>& stream);
  // Fails every request now with `reason` (shutdown deadline); the worker keeps serving.
  void abort_all(std::string reason);
  int64_t active_requests() const { return active_requests_.load(); }
  // Fails what is left and joins the thread; submit() refuses from then on.
  void stop();

 private:
  struct ActiveJob;
  struct ActiveSequence;
  struct Command {
    enum class Kind { Submit, Cancel, AbortAll, Stop } kind;
    std::shared_ptr<Job> job;               // Submit
    std::shared_ptr<RequestStream> stream;  // Cancel
    std::string reason;                     // AbortAll
  };

  void run();
  void apply(Command& command);
  void admit(std::shared_ptr<Job> job);
  void step();
  int32_t sample_row(ActiveSequence& seq, float* logits);
  void on_token(ActiveSequence& seq, int32_t id, std::chrono::steady_clock::time_point now);
  void finish_sequence(int64_t id, std::string reason);
  void end_job(ActiveJob& job, RequestOutcome outcome);  // erases it
  void fail_job(ActiveJob& job, const std::string& message, RequestOutcome outcome);
  void publish_gauges();
  std::string token_text(const ActiveSequence& seq, int32_t id) const;

  std::string name_;
  std::unique_ptr<Model> model_;
  std::optional<ChatTemplate> chat_template_override_;
  WorkerOptions options_;
  ModelMetrics metrics_;

  std::mutex inbox_mutex_;
  std::condition_variable inbox_cv_;
  std::vector<Command> inbox_;
  bool stopping_ = false;
  std::atomic<int64_t> active_requests_{0};
  std::thread thread_;

  // Worker-thread state.
  std::unique_ptr<Scheduler> scheduler_;
  SchedulerStep step_;
  std::vector<Command> commands_;
  std::vector<float> logits_;              // [rows, vocab]
  std::vector<int32_t> ids_;               // [rows]
  std::vector<RowSampling> row_sampling_;  // [rows] for Backend::forward_sample
  std::vector<uint8_t> seen_;              // [vocab] scratch for the presence penalty
  std::vector<float> raw_row_;             // [vocab] a row before bias and penalties, for logprobs
  std::vector<int64_t> stopped_;           // sequences a stop string ended this step
  std::unordered_map<int64_t, std::unique_ptr<ActiveSequence>> sequences_;
  std::unordered_map<const RequestStream*, std::unique_ptr<ActiveJob>> jobs_;
  int64_t next_sequence_id_ = 0;
};

}  // namespace kiln
