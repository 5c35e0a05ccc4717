#include "cli/bench_command.h"

#include <algorithm>
#include <cstdio>
#include <iostream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "engine/engine_file.h"
#include "cli/report_error.h"
#include "runtime/model.h"

namespace kiln {

namespace {


double mib(int64_t bytes) { return static_cast<double>(bytes) / 1048576.0; }

// The backend named in the engine's header (the checksum is verified once, by Model::load).
Result<std::string> engine_backend(const std::string& path) {
  LoadOptions options;
  options.verify_checksum = false;
  KILN_ASSIGN(LoadedEngine engine, load_engine(path, options));
  std::string backend(engine.header.backend, strnlen(engine.header.backend, sizeof(engine.header.backend)));
  return backend;
}

nlohmann::json profile_json(const StepProfile& p) {
  nlohmann::json rows = nlohmann::json::object();
  for (size_t r = 0; r < p.rows.size(); ++r) {
    nlohmann::json ops = nlohmann::json::object();
    for (size_t c = 0; c < p.ops.size(); ++c) ops[p.ops[c]] = p.ms[r][c];
    rows[p.rows[r]] = ops;
  }
  return {{"phase", p.phase}, {"num_tokens", p.num_tokens}, {"total_ms", p.total_ms}, {"rows", rows}};
}

nlohmann::json report_json(const std::string& engine, const BenchReport& r) {
  const BenchOptions& o = r.options;
  nlohmann::json out = {
      {"engine", engine},
      {"backend", r.backend},
      {"batch", o.batch},
      {"prompt_len", o.prompt_len},
      {"gen_len", o.gen_len},
      {"iterations", o.iterations},
      {"warmup", o.warmup},
      {"cpu_isa", r.cpu_isa},
      {"prompt_tokens", r.prompt_tokens},
      {"generated_tokens", r.generated_tokens},
      {"decode_steps", r.decode_steps},
      {"ttft_ms", r.ttft_ms},
      {"prompt_tokens_per_second", r.prompt_tokens_per_second},
      {"decode_step_ms_p50", r.decode_p50_ms},
      {"decode_step_ms_p90", r.decode_p90_ms},
      {"decode_step_ms_p99", r.decode_p99_ms},
      {"decode_tokens_per_second", r.decode_tokens_per_second},
      {"weight_bytes", r.weight_bytes},
      {"kv_cache_bytes", r.kv_cache_bytes},
      {"arena_bytes", r.arena_bytes},
      {"peak_device_bytes", r.peak_device_bytes},
      {"kernels_per_decode_step", r.kernels_per_decode_step},
      {"peak_rss_bytes", r.peak_rss_bytes},
      {"weight_bandwidth_bytes_per_second", r.weight_bandwidth_bytes_per_second},
      {"copy_bandwidth_bytes_per_second", r.copy_bandwidth_bytes_per_second},
      {"bandwidth_bound", r.bandwidth_bound},
      {"weight_bandwidth_fraction", r.weight_bandwidth_fraction},
  };
  if (!r.profiles.empty()) {
    out["profiles"] = nlohmann::json::array();
    for (const StepProfile& p : r.profiles) out["profiles"].push_back(profile_json(p));
  }
  return out;
}

// One row per layer (and per node outside the layers), one column per op kind, in ms.
void print_profile(const StepProfile& p) {
  size_t name_width = 8;
  for (const std::string& row : p.rows) name_width = std::max(name_width, row.size());
  fmt::print("\n{} step profile ({} tokens, {:.3f} ms total; ms per node kind)\n", p.phase, p.num_tokens, p.total_ms);
  fmt::print("{:<{}}", "", name_width);
  for (const std::string& op : p.ops) fmt::print(" {:>12}", op);
  fmt::print(" {:>12}\n", "total");
  std::vector<double> column_total(p.ops.size(), 0.0);
  for (size_t r = 0; r < p.rows.size(); ++r) {
    fmt::print("{:<{}}", p.rows[r], name_width);
    double row_total = 0;
    for (size_t c = 0; c < p.ops.size(); ++c) {
      fmt::print(" {:>12.4f}", p.ms[r][c]);
      row_total += p.ms[r][c];
      column_total[c] += p.ms[r][c];
    }
    fmt::print(" {:>12.4f}\n", row_total);
  }
  fmt::print("{:<{}}", "total", name_width);
  for (double t : column_total) fmt::print(" {:>12.4f}", t);
  fmt::print(" {:>12.4f}\n", p.total_ms);
}

void print_table(const std::string& engine, const BenchReport& r, int threads) {
  const BenchOptions& o = r.options;
  const std::string where = r.backend == "cpu" ? fmt::format("cpu, {} threads", threads > 0 ? std::to_string(threads) : "all")
                                                : r.backend;
  fmt::print("kiln bench {} ({})\n", engine, where);
  if (!r.cpu_isa.empty()) fmt::print("cpu kernels: {}\n", r.cpu_isa);
  fmt::print("batch {}, prompt {}, generate {}; {} iterations after {} warmup\n\n",
             o.batch, o.prompt_len, o.gen_len, o.iterations, o.warmup);
  auto row = [](const std::string& metric, const std::string& value) { fmt::print("{:<34} {}\n", metric, value); };
  row("time to first token (median)", fmt::format("{:.3f} ms", r.ttft_ms));
  row("prompt throughput", fmt::format("{:.1f} tok/s", r.prompt_tokens_per_second));
  row("decode step p50 / p90 / p99", fmt::format("{:.3f} / {:.3f} / {:.3f} ms", r.decode_p50_ms, r.decode_p90_ms, r.decode_p99_ms));
  row("decode throughput", fmt::format("{:.1f} tok/s", r.decode_tokens_per_second));
  row("tokens (prompt / generated)", fmt::format("{} / {} in {} decode steps", r.prompt_tokens, r.generated_tokens, r.decode_steps));
  row("weights / KV cache / arena", fmt::format("{:.1f} / {:.1f} / {:.1f} MiB", mib(r.weight_bytes), mib(r.kv_cache_bytes), mib(r.arena_bytes)));
  row("weight bandwidth (decode p50)", fmt::format("{:.2f} GB/s = {:.1f}% of the bound {:.2f} GB/s ({})",
                                                  r.weight_bandwidth_bytes_per_second / 1e9, 100.0 * r.weight_bandwidth_fraction,
                                                  r.copy_bandwidth_bytes_per_second / 1e9, r.bandwidth_bound));
  row("peak device memory", fmt::format("{:.1f} MiB", mib(r.peak_device_bytes)));
  if (r.kernels_per_decode_step > 0) row("kernels per decode step", fmt::format("{}", r.kernels_per_decode_step));
  row("peak RSS", fmt::format("{:.1f} MiB", mib(r.peak_rss_bytes)));
  for (const StepProfile& p : r.profiles) print_profile(p);
}

}  // namespace

CLI::App* add_bench_command(CLI::App& app, BenchArgs& args) {
  BenchOptions& o = args.options;
  auto* cmd = app.add_subcommand("bench", "Measure time to first token, decode latency and throughput on random prompts");
  cmd->add_option("ENGINE", args.engine, "engine file")->required();
  cmd->add_option("-b,--batch", o.batch, "sequences per iteration, prefilled and decoded together")->required();
  cmd->add_option("-p,--prompt-len", o.prompt_len, "random prompt tokens per sequence")->required();
  cmd->add_option("-g,--gen-len", o.gen_len, "tokens generated per sequence (first one from prefill)")->required();
  cmd->add_option("--iterations", o.iterations, "measured iterations");
  cmd->add_option("--warmup", o.warmup, "unmeasured iterations first");
  cmd->add_option("-t,--threads", args.threads, "CPU threads (0 = all cores)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--max-step-tokens", args.max_step_tokens, "token budget of one prefill step (0 = backend default)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--backend", args.backend, "cpu or cuda (default: the engine's)")->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_flag("--json", args.json, "print one JSON object instead of a table");
  cmd->add_flag("--verbose", o.verbose, "also profile one prefill and one decode step per layer and op kind");
  cmd->add_flag("--no-verify", args.no_verify, "skip the engine checksum");
  return cmd;
}

int run_bench_command(const BenchArgs& args) {
  const BenchOptions& o = args.options;
  // Checked before loading, which can take long for a large engine.
  if (o.batch < 1 || o.prompt_len < 1 || o.gen_len < 1) {
    return fail(make_error("bench: --batch, --prompt-len and --gen-len must be >= 1 (got {}, {}, {})", o.batch,
                           o.prompt_len, o.gen_len));
  }
  RuntimeOptions runtime;
  if (args.backend.empty()) {
    auto backend = engine_backend(args.engine);
    if (!backend.ok()) return fail(backend.error());
    runtime.backend = *backend;
  } else {
    runtime.backend = args.backend;
  }
  runtime.verify_checksum = !args.no_verify;
  BackendOptions& b = runtime.backend_options;
  b.num_threads = args.threads;
  if (args.max_step_tokens > 0) b.max_tokens_per_step = args.max_step_tokens;
  b.max_logit_rows = std::max<int64_t>(b.max_logit_rows, o.batch);
  // Only as much KV cache as the workload touches: B sequences of P + G - 1 positions.
  const int64_t positions = static_cast<int64_t>(o.prompt_len) + o.gen_len - 1;
  b.num_kv_blocks = static_cast<int64_t>(o.batch) * ((positions + b.kv_block_size - 1) / b.kv_block_size);

  auto model = Model::load(args.engine, runtime);
  if (!model.ok()) return fail(model.error());
  auto report = run_benchmark(**model, o);
  if (!report.ok()) return fail(report.error().with_context(args.engine));
  if (args.json) {
    std::cout << report_json(args.engine, *report).dump() << "\n";
  } else {
    print_table(args.engine, *report, args.threads);
  }
  return 0;
}

}  // namespace kiln
