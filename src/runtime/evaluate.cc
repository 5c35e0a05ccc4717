#include "runtime/evaluate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <span>

namespace kiln {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// log(sum_i exp(row[i])) in double, shifted by the max so no term overflows.
double log_sum_exp(const float* row, int64_t n) {
  const double max = *std::max_element(row, row + n);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(row[i]) - max);
  return max + std::log(sum);
}

int32_t argmax(const float* row, int64_t n) { return static_cast<int32_t>(std::max_element(row, row + n) - row); }

// Nearest-rank percentile of sorted values (q in (0, 1]).
double percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0;
  const size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(sorted.size())));
  return sorted[std::clamp<size_t>(rank, 1, sorted.size()) - 1];
}

Status check_tokens(const std::vector<int32_t>& tokens, int64_t vocab_size) {
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab_size) {
      return make_error("eval: token {} has id {}, outside the vocabulary of {} tokens", i, tokens[i], vocab_size);
    }
  }
  return Status::Ok();
}

// One sequence at a time on one model: a window's positions go through Backend::forward in steps,
// with logits for the positions whose next token is scored. Sized once for the largest window, so
// running windows allocates nothing; KV blocks are taken from the model's pool for each window and
// given back after it (and by the destructor, however the evaluation ends).
class WindowRunner {
 public:
  WindowRunner(Model& model, int64_t window) : model_(model), backend_(model.backend()) {
    block_size_ = backend_.kv_geometry().block_size;
    const int64_t max_blocks = (window + block_size_ - 1) / block_size_;
    batch_.max_blocks_per_seq = static_cast<int32_t>(max_blocks);
    batch_.block_tables.assign(static_cast<size_t>(max_blocks), -1);
    const size_t step_tokens = static_cast<size_t>(std::min<int64_t>(backend_.max_tokens_per_step(), window));
    batch_.tokens.reserve(step_tokens);
    batch_.positions.reserve(step_tokens);
    batch_.token_seq.reserve(step_tokens);
    batch_.logit_rows.reserve(static_cast<size_t>(backend_.max_logit_rows()));
    blocks_.reserve(static_cast<size_t>(max_blocks));
    logits_.resize(static_cast<size_t>(backend_.max_logit_rows() * backend_.vocab_size()));
  }
  ~WindowRunner() { release(); }
  WindowRunner(const WindowRunner&) = delete;
  WindowRunner& operator=(const WindowRunner&) = delete;

  // KV blocks for positions [0, positions).
  Status acquire(int64_t positions) {
    KvBlockPool& pool = model_.kv_pool();
    const int64_t needed = (positions + block_size_ - 1) / block_size_;
    if (pool.num_free() < needed) {
      return make_error("eval: a window of {} positions needs {} KV blocks, the pool has {} free", positions, needed,
                        pool.num_free());
    }
    for (int64_t i = 0; i < needed; ++i) {
      blocks_.push_back(*pool.allocate());
      batch_.block_tables[i] = blocks_.back();
    }
    return Status::Ok();
  }
  void release() {
    for (int32_t block : blocks_) model_.kv_pool().free(block);
    blocks_.clear();
    std::fill(batch_.block_tables.begin(), batch_.block_tables.end(), -1);
  }

  // Runs positions [from, to) of the current window (ids[p] at position p) and keeps the logits of
  // positions [logit_from, to) as rows 0, 1, ... (none when logit_from >= to).
  Status step(const int32_t* ids, int64_t from, int64_t to, int64_t logit_from) {
    batch_.tokens.clear();
    batch_.positions.clear();
    batch_.token_seq.clear();
    batch_.logit_rows.clear();
    for (int64_t p = from; p < to; ++p) {
      batch_.tokens.push_back(ids[p]);
      batch_.positions.push_back(static_cast<int32_t>(p));
      batch_.token_seq.push_back(0);
      if (p >= logit_from) batch_.logit_rows.push_back(static_cast<int32_t>(p - from));
    }
    return backend_.forward(batch_, logits_.data());
  }
  const float* row(int64_t r) const { return logits_.data() + r * backend_.vocab_size(); }

 private:
  Model& model_;
  Backend& backend_;
  int64_t block_size_ = 0;
  Batch batch_;                 // block_tables: [1, max_blocks], this window's blocks then -1
  std::vector<int32_t> blocks_; // blocks held for the current window
  std::vector<float> logits_;   // [max_logit_rows, vocab]
};

// Runs `window` of `sequence` on every runner in lock-step and calls on_rows(first, count) after
// each step whose logits cover window positions [first, first + count): row r of each runner is
// position first + r, whose target is sequence[window.begin + first + r + 1]. Steps respect the
// smallest token budget and logit row limit of the runners' backends. `ids` is scratch (reserved).
template <class OnRows>
Status run_window(std::span<WindowRunner* const> runners, const std::vector<int32_t>& sequence, const EvalWindow& window,
                  int32_t bos_id, int64_t max_tokens, int64_t max_rows, std::vector<int32_t>& ids, OnRows&& on_rows) {
  ids.assign(sequence.begin() + window.begin, sequence.begin() + window.end);
  if (bos_id >= 0) ids[0] = bos_id;
  // The last position predicts a token beyond the window: it need not run.
  const int64_t run = window.end - window.begin - 1;
  const int64_t logit_from = window.first_target - 1 - window.begin;
  for (WindowRunner* r : runners) KILN_TRY(r->acquire(run));
  for (int64_t from = 0; from < run;) {
    int64_t to = std::min(run, from + max_tokens);
    const int64_t first = std::max(from, logit_from);
    if (to > first) to = std::min(to, first + max_rows);
    for (WindowRunner* r : runners) KILN_TRY(r->step(ids.data(), from, to, logit_from));
    if (to > first) KILN_TRY(on_rows(first, to - first));
    from = to;
  }
  for (WindowRunner* r : runners) r->release();
  return Status::Ok();
}

int64_t min_limit(std::span<Model* const> models, int64_t (Backend::*limit)() const) {
  int64_t value = INT64_MAX;
  for (Model* m : models) value = std::min(value, (m->backend().*limit)());
  return value;
}

}  // namespace

Result<EvalOptions> resolve_eval_options(const EvalOptions& options, int64_t max_seq_len) {
  EvalOptions o = options;
  if (o.window == 0) o.window = std::min<int64_t>(max_seq_len, 512);
  if (o.window < 2) return make_error("eval: window must be at least 2 tokens, got {}", o.window);
  if (o.window > max_seq_len) {
    return make_error("eval: window {} exceeds the engine's max sequence length {}", o.window, max_seq_len);
  }
  if (o.stride == 0) o.stride = std::max<int64_t>(o.window / 2, 1);
  if (o.stride < 1) return make_error("eval: stride must be at least 1, got {}", o.stride);
  if (o.stride > o.window) return make_error("eval: stride {} exceeds the window {}", o.stride, o.window);
  return o;
}

std::vector<EvalWindow> plan_windows(int64_t num_tokens, int64_t window, int64_t stride) {
  std::vector<EvalWindow> windows;
  if (num_tokens < 2 || window < 2 || stride < 1) return windows;
  // A window of N positions predicts at most N-1 tokens: the one before its first scored token must
  // be inside it.
  const int64_t advance = std::min(stride, window - 1);
  int64_t end = std::min(num_tokens, window);
  windows.push_back({0, end, 1});
  while (end < num_tokens) {
    const int64_t next = std::min(num_tokens, end + advance);
    windows.push_back({std::max<int64_t>(0, next - window), next, end});
    end = next;
  }
  return windows;
}

Result<PerplexityReport> evaluate_perplexity(Model& model, const std::vector<int32_t>& tokens, const EvalOptions& options,
                                             const EvalProgressCallback& progress) {
  const auto start = Clock::now();
  KILN_ASSIGN(const EvalOptions o, resolve_eval_options(options, model.info().max_seq_len));
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n < 2) return make_error("eval: {} token(s): perplexity needs at least 2 (one to predict from, one to score)", n);
  Backend& backend = model.backend();
  const int64_t vocab = backend.vocab_size();
  KILN_TRY(check_tokens(tokens, vocab));
  if (o.bos_id >= vocab) return make_error("eval: bos id {} outside the vocabulary of {} tokens", o.bos_id, vocab);

  PerplexityReport report;
  report.options = o;
  report.tokens = n;
  const std::vector<EvalWindow> windows = plan_windows(n, o.window, o.stride);
  report.windows = static_cast<int64_t>(windows.size());
  WindowRunner runner(model, o.window);
  WindowRunner* const runners[] = {&runner};
  std::vector<int32_t> ids;
  ids.reserve(static_cast<size_t>(o.window));
  EvalProgress at{0, n - 1, 0};
  for (const EvalWindow& w : windows) {
    KILN_TRY(run_window(runners, tokens, w, o.bos_id, backend.max_tokens_per_step(), backend.max_logit_rows(), ids,
                        [&](int64_t first, int64_t count) -> Status {
                          for (int64_t r = 0; r < count; ++r) {
                            const float* row = runner.row(r);
                            const int32_t target = tokens[w.begin + first + r + 1];
                            at.nll_sum += log_sum_exp(row, vocab) - static_cast<double>(row[target]);
                          }
                          at.scored += count;
                          if (progress) progress(at);
                          return Status::Ok();
                        }));
    report.positions += w.end - w.begin - 1;
  }
  report.scored = at.scored;
  report.nll_sum = at.nll_sum;
  report.mean_nll = at.nll_sum / static_cast<double>(at.scored);
  report.perplexity = std::exp(report.mean_nll);
  report.seconds = seconds_since(start);
  return report;
}

Result<CompareReport> compare_engines(Model& reference, Model& other, const std::vector<std::vector<int32_t>>& sequences,
                                      const EvalOptions& options, const EvalProgressCallback& progress) {
  const auto start = Clock::now();
  const int64_t vocab = reference.backend().vocab_size();
  if (other.backend().vocab_size() != vocab) {
    return make_error("eval: the engines have different vocabularies ({} and {} tokens)", vocab,
                      other.backend().vocab_size());
  }
  if (const Tokenizer *a = reference.tokenizer(), *b = other.tokenizer(); a && b) {
    if (a->vocab_size() != b->vocab_size()) {
      return make_error("eval: the engines' tokenizers have different vocabularies ({} and {} tokens)", a->vocab_size(),
                        b->vocab_size());
    }
    for (int32_t id = 0; id < a->vocab_size(); ++id) {
      if (a->piece(id) != b->piece(id)) {
        return make_error("eval: the engines have different vocabularies (token {} is '{}' in one, '{}' in the other)", id,
                          a->piece(id), b->piece(id));
      }
    }
  }
  const int64_t max_seq_len = std::min(reference.info().max_seq_len, other.info().max_seq_len);
  KILN_ASSIGN(const EvalOptions o, resolve_eval_options(options, max_seq_len));
  if (o.bos_id >= vocab) return make_error("eval: bos id {} outside the vocabulary of {} tokens", o.bos_id, vocab);

  CompareReport report;
  report.options = o;
  EvalProgress at;
  for (const std::vector<int32_t>& s : sequences) {
    if (s.size() < 2) continue;
    KILN_TRY(check_tokens(s, vocab));
    ++report.sequences;
    report.tokens += static_cast<int64_t>(s.size());
    at.total += static_cast<int64_t>(s.size()) - 1;
  }
  if (at.total == 0) return make_error("eval: no sequence of at least 2 tokens to compare");

  Model* const models[] = {&reference, &other};
  const int64_t max_tokens = min_limit(models, &Backend::max_tokens_per_step);
  const int64_t max_rows = min_limit(models, &Backend::max_logit_rows);
  WindowRunner ref_runner(reference, o.window), other_runner(other, o.window);
  WindowRunner* const runners[] = {&ref_runner, &other_runner};
  std::vector<int32_t> ids;
  ids.reserve(static_cast<size_t>(o.window));
  std::vector<double> kl;  // [scored] one per position, sorted at the end for the percentile
  kl.reserve(static_cast<size_t>(at.total));
  int64_t agree = 0;
  double other_nll = 0, kl_sum = 0;
  for (const std::vector<int32_t>& s : sequences) {
    if (s.size() < 2) continue;
    for (const EvalWindow& w : plan_windows(static_cast<int64_t>(s.size()), o.window, o.stride)) {
      ++report.windows;
      KILN_TRY(run_window(runners, s, w, o.bos_id, max_tokens, max_rows, ids, [&](int64_t first, int64_t count) -> Status {
        for (int64_t r = 0; r < count; ++r) {
          const float* p = ref_runner.row(r);
          const float* q = other_runner.row(r);
          const double lse_p = log_sum_exp(p, vocab), lse_q = log_sum_exp(q, vocab);
          // KL(P || Q) = sum_i P_i (log P_i - log Q_i), log-softmax in double.
          double d = 0, diff = report.max_abs_logit_diff;
          for (int64_t i = 0; i < vocab; ++i) {
            const double log_p = static_cast<double>(p[i]) - lse_p;
            const double log_q = static_cast<double>(q[i]) - lse_q;
            d += std::exp(log_p) * (log_p - log_q);
            diff = std::max(diff, std::abs(static_cast<double>(p[i]) - static_cast<double>(q[i])));
          }
          d = std::max(d, 0.0);  // rounding can leave a tiny negative where P == Q
          report.max_abs_logit_diff = diff;
          kl.push_back(d);
          kl_sum += d;
          agree += argmax(p, vocab) == argmax(q, vocab);
          const int32_t target = s[w.begin + first + r + 1];
          at.nll_sum += lse_p - static_cast<double>(p[target]);
          other_nll += lse_q - static_cast<double>(q[target]);
        }
        at.scored += count;
        if (progress) progress(at);
        return Status::Ok();
      }));
    }
  }
  report.scored = at.scored;
  const double scored = static_cast<double>(at.scored);
  std::sort(kl.begin(), kl.end());
  report.kl_mean = kl_sum / scored;
  report.kl_p99 = percentile(kl, 0.99);
  report.kl_max = kl.back();
  report.top1_agreement = static_cast<double>(agree) / scored;
  report.reference_mean_nll = at.nll_sum / scored;
  report.other_mean_nll = other_nll / scored;
  report.reference_perplexity = std::exp(report.reference_mean_nll);
  report.other_perplexity = std::exp(report.other_mean_nll);
  report.seconds = seconds_since(start);
  return report;
}

}  // namespace kiln
