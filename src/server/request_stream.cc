#include "server/request_stream.h"

namespace kiln {

void RequestStream::append(int choice, std::string_view text, TokenLogprob* logprob) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ChoiceUpdate& u = pending_[choice];
    u.text.append(text);
    if (logprob) u.logprobs.push_back(std::move(*logprob));
    changed_ = true;
  }
  changed_cv_.notify_one();
}

void RequestStream::finish(int choice, std::string finish_reason, int64_t completion_tokens) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ChoiceUpdate& u = pending_[choice];
    u.finished = true;
    u.finish_reason = std::move(finish_reason);
    u.completion_tokens = completion_tokens;
    changed_ = true;
  }
  changed_cv_.notify_one();
}

void RequestStream::fail(std::string message) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!error_) error_ = std::move(message);
    changed_ = true;
  }
  changed_cv_.notify_one();
}

bool RequestStream::wait_and_take(std::vector<ChoiceUpdate>& updates, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (!changed_cv_.wait_for(lock, timeout, [&] { return changed_; })) return false;
  updates.resize(pending_.size());
  for (size_t i = 0; i < pending_.size(); ++i) {
    ChoiceUpdate& from = pending_[i];
    ChoiceUpdate& to = updates[i];
    // Swap rather than copy: both sides keep their buffers' capacity.
    to.text.clear();
    to.logprobs.clear();
    std::swap(to.text, from.text);
    std::swap(to.logprobs, from.logprobs);
    to.finished = from.finished;
    to.finish_reason = from.finish_reason;
    to.completion_tokens = from.completion_tokens;
  }
  changed_ = false;
  return true;
}

std::optional<std::string> RequestStream::error() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return error_;
}

}  // namespace kiln
