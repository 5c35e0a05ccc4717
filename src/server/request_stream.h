// The channel from an engine worker to the HTTP thread serving one request. The worker appends text
// deltas (and log-probabilities) per choice and marks choices finished; the HTTP thread waits and
// takes everything new at once. Deltas coalesce while the HTTP thread is busy writing, so a slow
// client costs the worker nothing: it never blocks on a reader.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kiln {

// One generated token's log-probability under the model, with the most likely alternatives.
struct TokenLogprob {
  std::string token;  // its text (bytes; may be part of a UTF-8 character)
  float logprob = 0.0f;
  std::vector<std::pair<std::string, float>> top;  // [k] most likely first
};

struct ChoiceUpdate {
  std::string text;                    // new text since the last take
  std::vector<TokenLogprob> logprobs;  // tokens since the last take (when asked for)
  bool finished = false;               // sticky once set
  std::string finish_reason;           // "stop" or "length"
  int64_t completion_tokens = 0;       // when finished
};

class RequestStream {
 public:
  explicit RequestStream(int num_choices) : pending_(num_choices) {}

  // ---- worker side ----
  void append(int choice, std::string_view text, TokenLogprob* logprob);  // logprob moved from when given
  void finish(int choice, std::string finish_reason, int64_t completion_tokens);
  // Ends the whole request with an error (backend failure, shutdown); the reader reports it.
  void fail(std::string message);

  // ---- reader side ----
  // Waits up to `timeout` for news, then moves what is new into `updates` ([num_choices], reused:
  // texts and logprobs are replaced, finished flags copied). Returns true when anything changed.
  bool wait_and_take(std::vector<ChoiceUpdate>& updates, std::chrono::milliseconds timeout);
  std::optional<std::string> error() const;

  // The reader is gone (client disconnected): the worker drops the request.
  void cancel() { cancelled_.store(true); }
  bool cancelled() const { return cancelled_.load(); }
  int num_choices() const { return static_cast<int>(pending_.size()); }

 private:
  mutable std::mutex mutex_;
  std::condition_variable changed_cv_;
  std::vector<ChoiceUpdate> pending_;
  bool changed_ = false;
  std::optional<std::string> error_;
  std::atomic<bool> cancelled_{false};
};

}  // namespace kiln
