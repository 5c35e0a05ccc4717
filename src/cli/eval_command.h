// `kiln eval`: the command-line face of runtime/evaluate.h. Sliding-window perplexity of an engine
// over a text file, or a teacher-forced comparison of two engines (KL divergence, top-1 agreement,
// logit differences); a table or one JSON object.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>

namespace kiln {

struct EvalArgs {
  std::string engine;
  std::string perplexity_file;       // --perplexity: the text, scored in sliding windows
  std::string compare_engine;        // --compare: the engine compared against ENGINE (the reference)
  std::string prompts_file;          // --prompts: one sequence per non-empty line
  std::optional<int64_t> window;     // unset: min(engine max sequence length, 512)
  std::optional<int64_t> stride;     // unset: window / 2
  std::optional<int64_t> max_tokens; // unset: every token of the file
  int threads = 0;
  bool json = false;
  bool no_verify = false;
};

// Adds the `eval` subcommand, writing into `args`; returns it so the caller can test parsed().
CLI::App* add_eval_command(CLI::App& app, EvalArgs& args);

// Runs it; returns the process exit status (errors print one line "kiln: error: ...").
int run_eval_command(const EvalArgs& args);

}  // namespace kiln
