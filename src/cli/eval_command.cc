#include "cli/eval_command.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <memory>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/report_error.h"
#include "engine/engine_file.h"
#include "runtime/evaluate.h"
#include "runtime/model.h"

namespace kiln {

namespace {

using Clock = std::chrono::steady_clock;

Result<std::string> read_text(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return make_error("{}: cannot open: {}", path, std::strerror(errno));
  std::string text;
  char buffer[65536];
  size_t n = 0;
  while ((n = std::fread(buffer, 1, sizeof(buffer), f)) > 0) text.append(buffer, n);
  const bool failed = std::ferror(f) != 0;
  const int error = errno;
  std::fclose(f);
  if (failed) return make_error("{}: cannot read: {}", path, std::strerror(error));
  if (text.find_first_not_of(" \t\r\n\f\v") == std::string::npos) {
    return make_error("{}: empty text: nothing to evaluate", path);
  }
  return text;
}

// What the engine file says about itself, read before loading it (the load needs the window).
struct EngineShape {
  int64_t max_seq_len = 0;
  int64_t vocab_size = 0;
};

Result<EngineShape> peek_engine(const std::string& path) {
  LoadOptions options;
  options.verify_checksum = false;  // Model::load verifies it
  KILN_ASSIGN(LoadedEngine engine, load_engine(path, options));
  try {
    return EngineShape{engine.metadata.at("profile").at("max_seq_len").get<int64_t>(),
                       engine.metadata.at("model").at("vocab_size").get<int64_t>()};
  } catch (const nlohmann::json::exception& e) {
    return make_error("{}: engine metadata malformed: {}", path, e.what());
  }
}

// One sequence of `window` positions at a time: KV blocks for one window, and logits for up to the
// whole window per step where they fit in ~32 MiB ([rows, vocab] f32; the backend holds a few such
// buffers: arena, host copy), else the default 64 rows and more steps.
Result<std::unique_ptr<Model>> load_for_eval(const std::string& path, int64_t window, int64_t vocab_size, const EvalArgs& args) {
  RuntimeOptions runtime;
  runtime.verify_checksum = !args.no_verify;
  BackendOptions& b = runtime.backend_options;
  b.num_threads = args.threads;
  b.max_sequences = 1;
  b.num_kv_blocks = (window + b.kv_block_size - 1) / b.kv_block_size;
  const int64_t rows_in_budget = (int64_t{32} << 20) / (4 * std::max<int64_t>(vocab_size, 1));
  b.max_logit_rows = std::max<int64_t>(b.max_logit_rows, std::min(window, rows_in_budget));
  return Model::load(path, runtime);
}

// stderr progress: a bar redrawn in place on a terminal; otherwise a line every 5 seconds (none for a
// run shorter than that), so logs of long runs show it is alive without filling up.
class Progress {
 public:
  Progress() : tty_(isatty(fileno(stderr)) != 0), start_(Clock::now()), last_(start_) {}
  void update(const EvalProgress& p) {
    const auto now = Clock::now();
    const double since_last = std::chrono::duration<double>(now - last_).count();
    const bool done = p.scored == p.total;
    if (since_last < (tty_ ? 0.1 : 5.0) && !(tty_ && done)) return;
    last_ = now;
    const double elapsed = std::chrono::duration<double>(now - start_).count();
    const double fraction = p.total > 0 ? static_cast<double>(p.scored) / static_cast<double>(p.total) : 1.0;
    const double rate = elapsed > 0 ? static_cast<double>(p.scored) / elapsed : 0;
    const double ppl = p.scored > 0 ? std::exp(p.nll_sum / static_cast<double>(p.scored)) : 0;
    if (tty_) {
      constexpr int kWidth = 30;
      const int filled = static_cast<int>(fraction * kWidth);
      fmt::print(stderr, "\r[{:=<{}}{:<{}}] {:5.1f}% {}/{} tokens, {:.0f} tok/s, ppl {:.4f}  ", "", filled, "",
                 kWidth - filled, 100.0 * fraction, p.scored, p.total, rate, ppl);
      drawn_ = true;
    } else {
      fmt::print(stderr, "kiln: eval: {}/{} tokens scored ({:.1f}%), {:.0f} tok/s, ppl so far {:.4f}\n", p.scored,
                 p.total, 100.0 * fraction, rate, ppl);
    }
    std::fflush(stderr);
  }
  // Ends the bar's line, so what follows starts on its own.
  void finish() {
    if (drawn_) fmt::print(stderr, "\n");
    drawn_ = false;
  }
  ~Progress() { finish(); }

 private:
  bool tty_;
  bool drawn_ = false;
  Clock::time_point start_, last_;
};

nlohmann::json optional_json(const std::optional<int64_t>& v) { return v ? nlohmann::json(*v) : nlohmann::json(); }

std::string where(Model& model, int threads) {
  const std::string backend = model.backend().name();
  if (backend != "cpu") return backend;
  return fmt::format("cpu, {} threads", threads > 0 ? std::to_string(threads) : "all");
}

std::string bos_note(int32_t bos_id) {
  return bos_id >= 0 ? fmt::format("BOS {} at every window start", bos_id) : "no BOS (the tokenizer adds none)";
}

int run_perplexity(const EvalArgs& args) {
  auto text = read_text(args.perplexity_file);
  if (!text.ok()) return fail(text.error());
  auto shape = peek_engine(args.engine);
  if (!shape.ok()) return fail(shape.error());
  EvalOptions requested;
  requested.window = args.window.value_or(0);
  requested.stride = args.stride.value_or(0);
  auto options = resolve_eval_options(requested, shape->max_seq_len);
  if (!options.ok()) return fail(options.error().with_context(args.engine));
  auto model = load_for_eval(args.engine, options->window, shape->vocab_size, args);
  if (!model.ok()) return fail(model.error());
  const Tokenizer* tok = (*model)->tokenizer();
  if (!tok) return fail(make_error("{}: engine has no tokenizer; rebuild it with --tokenizer", args.engine));

  // As `kiln run -p`: BOS first when the tokenizer has one (llama2.c, SentencePiece Llama), none
  // otherwise (byte-level BPE such as SmolLM2 or Qwen2, whose tokenizers add no BOS).
  std::vector<int32_t> tokens = tok->encode(*text, /*add_bos=*/true);
  const int64_t file_tokens = static_cast<int64_t>(tokens.size());
  if (args.max_tokens && static_cast<int64_t>(tokens.size()) > *args.max_tokens) tokens.resize(*args.max_tokens);
  options->bos_id = tok->bos_id();

  Progress progress;
  auto report = evaluate_perplexity(**model, tokens, *options, [&](const EvalProgress& p) { progress.update(p); });
  progress.finish();
  if (!report.ok()) return fail(report.error().with_context(args.engine));
  const PerplexityReport& r = *report;
  if (args.json) {
    const nlohmann::json out = {
        {"mode", "perplexity"},
        {"engine", args.engine},
        {"file", args.perplexity_file},
        {"file_bytes", text->size()},
        {"backend", (*model)->backend().name()},
        {"threads", args.threads},
        {"window", r.options.window},
        {"stride", r.options.stride},
        {"max_tokens", optional_json(args.max_tokens)},
        {"bos_id", r.options.bos_id},
        {"file_tokens", file_tokens},
        {"tokens", r.tokens},
        {"windows", r.windows},
        {"scored_tokens", r.scored},
        {"positions", r.positions},
        {"nll_sum", r.nll_sum},
        {"mean_nll", r.mean_nll},
        {"perplexity", r.perplexity},
        {"seconds", r.seconds},
    };
    std::cout << out.dump() << "\n";
    return 0;
  }
  auto row = [](const std::string& metric, const std::string& value) { fmt::print("{:<12} {}\n", metric, value); };
  fmt::print("kiln eval {} ({})\n", args.engine, where(**model, args.threads));
  row("text", fmt::format("{}: {} bytes, {} tokens{} ({})", args.perplexity_file, text->size(), file_tokens,
                          r.tokens < file_tokens ? fmt::format(", first {} used", r.tokens) : "", bos_note(r.options.bos_id)));
  row("windows", fmt::format("{} of {} positions, stride {}", r.windows, r.options.window, r.options.stride));
  row("scored", fmt::format("{} tokens", r.scored));
  row("mean NLL", fmt::format("{:.6f} nats/token", r.mean_nll));
  row("perplexity", fmt::format("{:.4f}", r.perplexity));
  row("time", fmt::format("{:.2f} s ({:.0f} positions/s)", r.seconds, r.seconds > 0 ? r.positions / r.seconds : 0));
  return 0;
}

int run_compare(const EvalArgs& args) {
  const bool from_prompts = !args.prompts_file.empty();
  const std::string& file = from_prompts ? args.prompts_file : args.perplexity_file;
  auto text = read_text(file);
  if (!text.ok()) return fail(text.error());
  auto shape = peek_engine(args.engine);
  if (!shape.ok()) return fail(shape.error());
  auto shape2 = peek_engine(args.compare_engine);
  if (!shape2.ok()) return fail(shape2.error());
  if (shape->vocab_size != shape2->vocab_size) {
    return fail(make_error("eval: {} has a vocabulary of {} tokens, {} of {}: compare needs the same vocabulary",
                           args.engine, shape->vocab_size, args.compare_engine, shape2->vocab_size));
  }
  EvalOptions requested;
  requested.window = args.window.value_or(0);
  requested.stride = args.stride.value_or(0);
  auto options = resolve_eval_options(requested, std::min(shape->max_seq_len, shape2->max_seq_len));
  if (!options.ok()) return fail(options.error());
  auto reference = load_for_eval(args.engine, options->window, shape->vocab_size, args);
  if (!reference.ok()) return fail(reference.error());
  auto other = load_for_eval(args.compare_engine, options->window, shape2->vocab_size, args);
  if (!other.ok()) return fail(other.error());
  const Tokenizer* tok = (*reference)->tokenizer();
  if (!tok) return fail(make_error("{}: engine has no tokenizer; rebuild it with --tokenizer", args.engine));
  options->bos_id = tok->bos_id();

  // --prompts: one sequence per non-empty line; --perplexity: the whole file as one sequence. Either
  // way BOS first as `kiln run -p` adds it, and at most --max-tokens tokens over all sequences.
  std::vector<std::vector<int32_t>> sequences;
  int64_t budget = args.max_tokens.value_or(INT64_MAX);
  auto add = [&](std::string_view piece) {
    if (budget <= 0 || piece.find_first_not_of(" \t\r\f\v") == std::string_view::npos) return;
    std::vector<int32_t> ids = tok->encode(piece, /*add_bos=*/true);
    if (static_cast<int64_t>(ids.size()) > budget) ids.resize(budget);
    budget -= static_cast<int64_t>(ids.size());
    sequences.push_back(std::move(ids));
  };
  if (from_prompts) {
    std::string_view rest(*text);
    while (!rest.empty()) {
      const size_t newline = rest.find('\n');
      std::string_view line = rest.substr(0, newline);
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      add(line);
      rest = newline == std::string_view::npos ? std::string_view() : rest.substr(newline + 1);
    }
  } else {
    add(*text);
  }

  Progress progress;
  auto report = compare_engines(**reference, **other, sequences, *options, [&](const EvalProgress& p) { progress.update(p); });
  progress.finish();
  if (!report.ok()) return fail(report.error());
  const CompareReport& r = *report;
  if (args.json) {
    const nlohmann::json out = {
        {"mode", "compare"},
        {"engine", args.engine},
        {"engine2", args.compare_engine},
        {"file", file},
        {"source", from_prompts ? "prompts" : "text"},
        {"backend", (*reference)->backend().name()},
        {"backend2", (*other)->backend().name()},
        {"threads", args.threads},
        {"window", r.options.window},
        {"stride", r.options.stride},
        {"max_tokens", optional_json(args.max_tokens)},
        {"bos_id", r.options.bos_id},
        {"sequences", r.sequences},
        {"tokens", r.tokens},
        {"windows", r.windows},
        {"scored_tokens", r.scored},
        {"kl_mean", r.kl_mean},
        {"kl_p99", r.kl_p99},
        {"kl_max", r.kl_max},
        {"top1_agreement_percent", 100.0 * r.top1_agreement},
        {"max_abs_logit_diff", r.max_abs_logit_diff},
        {"engine_mean_nll", r.reference_mean_nll},
        {"engine2_mean_nll", r.other_mean_nll},
        {"engine_perplexity", r.reference_perplexity},
        {"engine2_perplexity", r.other_perplexity},
        {"seconds", r.seconds},
    };
    std::cout << out.dump() << "\n";
    return 0;
  }
  auto row = [](const std::string& metric, const std::string& value) { fmt::print("{:<18} {}\n", metric, value); };
  fmt::print("kiln eval {} (reference, {}) vs {} ({})\n", args.engine, where(**reference, args.threads), args.compare_engine,
             where(**other, args.threads));
  row("tokens", fmt::format("{}: {} sequence(s), {} tokens ({}), {} window(s) of {} positions, stride {}", file,
                            r.sequences, r.tokens, bos_note(r.options.bos_id), r.windows, r.options.window, r.options.stride));
  row("positions", fmt::format("{} compared", r.scored));
  row("KL mean/p99/max", fmt::format("{:.6g} / {:.6g} / {:.6g} nats", r.kl_mean, r.kl_p99, r.kl_max));
  row("top-1 agreement", fmt::format("{:.2f}%", 100.0 * r.top1_agreement));
  row("max |logit diff|", fmt::format("{:.6g}", r.max_abs_logit_diff));
  row("perplexity", fmt::format("{:.4f} (reference) vs {:.4f} ({:+.3f}%)", r.reference_perplexity, r.other_perplexity,
                                100.0 * (r.other_perplexity / r.reference_perplexity - 1.0)));
  row("time", fmt::format("{:.2f} s", r.seconds));
  return 0;
}

}  // namespace

CLI::App* add_eval_command(CLI::App& app, EvalArgs& args) {
  auto* cmd = app.add_subcommand("eval", "Measure an engine's perplexity on a text, or compare two engines' next-token distributions");
  cmd->add_option("ENGINE", args.engine, "engine file (with --compare: the reference)")->required();
  cmd->add_option("--perplexity", args.perplexity_file, "text file scored in sliding windows");
  cmd->add_option("--compare", args.compare_engine, "engine compared against ENGINE (same vocabulary)");
  cmd->add_option("--prompts", args.prompts_file, "with --compare: text file, one sequence per non-empty line");
  cmd->add_option("--window", args.window, "positions per window (default: min(max sequence length, 512))");
  cmd->add_option("--stride", args.stride, "tokens each later window scores (default: window / 2)");
  cmd->add_option("--max-tokens", args.max_tokens, "use at most this many tokens of the file (quick runs)");
  cmd->add_option("-t,--threads", args.threads, "CPU threads (0 = all cores)");
  cmd->add_flag("--json", args.json, "print one JSON object instead of a table");
  cmd->add_flag("--no-verify", args.no_verify, "skip the engine checksum");
  return cmd;
}

int run_eval_command(const EvalArgs& args) {
  // Checked before loading, which can take long for a large engine.
  const bool compare = !args.compare_engine.empty();
  if (!compare && !args.prompts_file.empty()) return fail(make_error("eval: --prompts needs --compare ENGINE2"));
  if (!compare && args.perplexity_file.empty()) {
    return fail(make_error("eval: give --perplexity FILE, or --compare ENGINE2 with --prompts FILE"));
  }
  if (compare && args.perplexity_file.empty() == args.prompts_file.empty()) {
    return fail(make_error("eval: --compare needs one of --prompts FILE (one sequence per line) or --perplexity FILE (one text)"));
  }
  if (args.window && *args.window < 2) return fail(make_error("eval: --window must be at least 2, got {}", *args.window));
  if (args.stride && *args.stride < 1) return fail(make_error("eval: --stride must be at least 1, got {}", *args.stride));
  if (args.window && args.stride && *args.stride > *args.window) {
    return fail(make_error("eval: --stride {} exceeds --window {}", *args.stride, *args.window));
  }
  if (args.max_tokens && *args.max_tokens < 2) {
    return fail(make_error("eval: --max-tokens must be at least 2, got {}", *args.max_tokens));
  }
  if (args.threads < 0) return fail(make_error("eval: --threads must be >= 0, got {}", args.threads));
  return compare ? run_compare(args) : run_perplexity(args);
}

}  // namespace kiln
