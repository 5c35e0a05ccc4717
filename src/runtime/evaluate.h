// `kiln eval`: teacher-forced scoring of token sequences, to put a number on what a quantized or
// lower-precision engine costs in accuracy.
//
// Perplexity uses sliding windows, as transformers' "Perplexity of fixed-length models" guide and
// llama.cpp's llama-perplexity do: a window holds at most `window` model positions; the first window
// scores every token it can (tokens 1..window-1, each from the positions before it); each later window
// moves on and scores only tokens no earlier window scored, the last `stride` of it, with the rest of
// the window as context. A window of N positions makes at most N-1 predictions (its first position
// has nothing before it), so a stride of N behaves as N-1: adjacent windows share one token, the last
// of one being the first (context-only) position of the next. Either way every token but the first is
// scored exactly once: scored == tokens - 1.
//
// BOS: when the options name a bos id, every window's first position holds it (the sequence itself
// starts with it, as Tokenizer::encode(text, add_bos=true) writes it; a later window's first token is
// replaced, as llama-perplexity does), so every window reads as a fresh document start.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "common/error.h"
#include "runtime/model.h"

namespace kiln {

struct EvalOptions {
  int64_t window = 0;   // model positions per window; 0: min(engine max sequence length, 512)
  int64_t stride = 0;   // tokens each window after the first scores; 0: window / 2
  int32_t bos_id = -1;  // >= 0: the id every window's first position holds
};

// Fills the defaults from the engine's max sequence length and checks the ranges:
// 2 <= window <= max_seq_len and 1 <= stride <= window (one line per problem).
Result<EvalOptions> resolve_eval_options(const EvalOptions& options, int64_t max_seq_len);

// One window over a sequence: model positions 0..end-begin-1 hold tokens[begin, end) (position 0
// holds BOS instead when the options name one); it scores tokens[first_target, end), each from the
// logits of the position before it (first_target > begin).
struct EvalWindow {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t first_target = 0;
};

// The windows over a sequence of `num_tokens` >= 2 tokens (options resolved). Their scored ranges
// are [1, num_tokens) cut into consecutive pieces.
std::vector<EvalWindow> plan_windows(int64_t num_tokens, int64_t window, int64_t stride);

struct PerplexityReport {
  EvalOptions options;   // resolved
  int64_t tokens = 0;    // tokens of the sequence
  int64_t windows = 0;
  int64_t scored = 0;    // tokens scored: tokens - 1
  int64_t positions = 0; // model positions run over all windows (the work done)
  double nll_sum = 0;    // sum over scored tokens of -log p(token | context), nats
  double mean_nll = 0;   // nll_sum / scored
  double perplexity = 0; // exp(mean_nll)
  double seconds = 0;
};

struct EvalProgress {
  int64_t scored = 0;  // tokens (positions) scored so far
  int64_t total = 0;   // tokens to score in all
  double nll_sum = 0;  // of the reference engine so far
};
using EvalProgressCallback = std::function<void(const EvalProgress&)>;

// Sliding-window perplexity of `model` over `tokens` (see the top of this file). The model's backend
// must accept `window` positions of one sequence (KV blocks for it in the model's pool); it returns
// logits for as many rows as its max_logit_rows allows per step, so a larger max_logit_rows
// (BackendOptions) means fewer steps. `progress` is called after every step.
// Errors (one line): fewer than 2 tokens, token ids outside the vocabulary, bad options, a KV pool
// too small for one window, any backend error.
Result<PerplexityReport> evaluate_perplexity(Model& model, const std::vector<int32_t>& tokens, const EvalOptions& options,
                                             const EvalProgressCallback& progress = {});

struct CompareReport {
  EvalOptions options;   // resolved
  int64_t sequences = 0; // sequences compared (those of at least 2 tokens)
  int64_t tokens = 0;    // their tokens
  int64_t windows = 0;
  int64_t scored = 0;    // positions compared (the scored tokens of every sequence)
  // KL(P_reference || P_other) per position, in nats (the reference is the higher-precision engine).
  double kl_mean = 0, kl_p99 = 0, kl_max = 0;
  double top1_agreement = 0;       // fraction of positions where both argmaxes agree (lowest id on ties)
  double max_abs_logit_diff = 0;   // max over positions and vocabulary of |logit_reference - logit_other|
  double reference_mean_nll = 0, other_mean_nll = 0;
  double reference_perplexity = 0, other_perplexity = 0;
  double seconds = 0;
};

// Runs both engines teacher-forced over the same windows of every sequence (windows as for
// perplexity; sequences of fewer than 2 tokens are skipped) and compares their next-token
// distributions at every scored position. The engines must have the same vocabulary (size and
// every piece where both carry a tokenizer).
Result<CompareReport> compare_engines(Model& reference, Model& other, const std::vector<std::vector<int32_t>>& sequences,
                                      const EvalOptions& options, const EvalProgressCallback& progress = {});

}  // namespace kiln
