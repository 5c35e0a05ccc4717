// The kiln command line: a thin shell over the library. Every error reaches the user as one line
// "kiln: error: ..." and a non-zero exit.
#include <sys/resource.h>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <random>
#include <sstream>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/bench_command.h"
#include "cli/eval_command.h"
#include "cli/serve_command.h"
#include "backend/kernel_plan.h"
#include "backend/kv_cache_dtype.h"
#include "compiler/build_engine.h"
#include "engine/engine_file.h"
#include "graph/graph.h"
#include "runtime/generator.h"
#include "cli/report_error.h"
#include "runtime/model.h"
#include "tokenizer/tokenizer.h"

namespace kiln {

namespace {


double peak_rss_mib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // ru_maxrss is KiB on Linux
}

Result<std::vector<int32_t>> parse_ids(const std::string& text) {
  std::vector<int32_t> ids;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    const auto b = item.find_first_not_of(" \t"), e = item.find_last_not_of(" \t");
    if (b == std::string::npos) return make_error("--prompt-ids: empty entry in '{}'", text);
    item = item.substr(b, e - b + 1);
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != item.size() || v < INT32_MIN || v > INT32_MAX) return make_error("--prompt-ids: '{}' is not an integer id", item);
    ids.push_back(static_cast<int32_t>(v));
  }
  if (ids.empty()) return make_error("--prompt-ids: no ids given");
  return ids;
}

// ---- build ----
struct BuildArgs {
  BuildOptions options;
};

int run_build(const BuildArgs& args) {
  auto report = build_engine(args.options);
  if (!report.ok()) return fail(report.error());
  for (const std::string& warning : report->warnings) fmt::print(stderr, "kiln: warning: {}\n", warning);
  for (const std::string& note : report->quant_notes) fmt::print(stderr, "kiln: quant: {}\n", note);
  fmt::print(stderr, "kiln: wrote {} ({} tensors, {:.1f} MiB of weights; fused {} qkv, {} gate_up, {} add+rms_norm, {} rope into attention, {} swiglu into down; tokenizer: {}; tactics: {}{}; kv cache: {})\n",
             args.options.output_path, report->num_tensors, report->weight_bytes / 1048576.0, report->fused_qkv,
             report->fused_gate_up, report->fused_add_rms_norm, report->fused_rope, report->fused_swiglu_linear, report->tokenizer.empty() ? "none" : report->tokenizer, report->tactics,
             report->quant.empty() ? "" : "; quant: " + report->quant, report->kv_cache);
  return 0;
}

// ---- run ----
struct RunArgs {
  std::string engine;
  std::string prompt;
  std::string prompt_ids;
  std::string chat;    // a user message, through the engine's chat template
  std::string system;  // with --chat: a system message first
  int32_t max_new_tokens = 256;
  float temperature = 1.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
  int64_t seed = -1;
  std::vector<std::string> stop;
  int threads = 0;
  int64_t max_step_tokens = 0;
  bool json = false;
  bool dump_logits = false;
  bool ignore_eos = false;
  bool no_verify = false;
};

int run_run(const RunArgs& args) {
  RuntimeOptions options;
  options.backend_options.num_threads = args.threads;
  options.backend_options.max_sequences = 1;  // one sequence: KV cache for one max-length sequence
  if (args.max_step_tokens > 0) options.backend_options.max_tokens_per_step = args.max_step_tokens;
  options.verify_checksum = !args.no_verify;
  auto model = Model::load(args.engine, options);
  if (!model.ok()) return fail(model.error());
  GenerationRequest request;
  if (!args.prompt_ids.empty()) {
    auto ids = parse_ids(args.prompt_ids);
    if (!ids.ok()) return fail(ids.error());
    request.prompt_ids = *ids;
  } else if (!args.chat.empty()) {
    const Tokenizer* tok = (*model)->tokenizer();
    if (!tok) return fail(make_error("{}: engine has no tokenizer; --chat needs one", args.engine));
    const ChatTemplate* chat = (*model)->chat_template();
    if (!chat) {
      return fail(make_error("{}: engine has no chat template; rebuild it with --chat-template FILE, or use -p", args.engine));
    }
    std::vector<ChatMessage> messages;
    if (!args.system.empty()) messages.push_back({"system", args.system});
    messages.push_back({"user", args.chat});
    auto text = chat->render(messages, /*add_generation_prompt=*/true);
    if (!text.ok()) return fail(text.error().with_context("chat template"));
    // Templates usually write the BOS token themselves (as the server does: no second one).
    const int32_t bos = tok->bos_id();
    const bool has_bos = bos >= 0 && !tok->piece(bos).empty() && std::string_view(*text).starts_with(tok->piece(bos));
    request.prompt_ids = tok->encode(*text, /*add_bos=*/!has_bos);
  } else {
    const Tokenizer* tok = (*model)->tokenizer();
    if (!tok) return fail(make_error("{}: engine has no tokenizer; pass --prompt-ids or rebuild with --tokenizer", args.engine));
    request.prompt_ids = tok->encode(args.prompt, /*add_bos=*/true);
  }
  request.max_new_tokens = args.max_new_tokens;
  request.sampling = SamplingParams{args.temperature, args.top_k, args.top_p, args.min_p, args.repetition_penalty,
                                    args.seed >= 0 ? static_cast<uint64_t>(args.seed) : std::random_device{}()};
  request.stop_strings = args.stop;
  request.ignore_eos = args.ignore_eos;
  request.want_last_logits = args.dump_logits;

  TextCallback on_text;
  if (!args.json) {
    // Echo the prompt so the output reads as one text (as llama2.c and llama.cpp do).
    const Tokenizer* tok = (*model)->tokenizer();
    // With --chat only the answer is printed (the rendered template is markup, not the user's text).
    const std::string prompt_text = !args.chat.empty()       ? ""
                                    : args.prompt_ids.empty() ? args.prompt
                                                              : (tok ? tok->decode(request.prompt_ids) : "");
    std::fwrite(prompt_text.data(), 1, prompt_text.size(), stdout);
    on_text = [](std::string_view text) {
      std::fwrite(text.data(), 1, text.size(), stdout);
      std::fflush(stdout);
    };
  }
  auto result = generate(**model, request, on_text);
  if (!result.ok()) return fail(result.error());
  const GenerationStats& s = result->stats;
  const double prompt_tps = s.prompt_seconds > 0 ? s.prompt_tokens / s.prompt_seconds : 0;
  const double decode_tps = s.decode_seconds > 0 && s.generated_tokens > 1 ? (s.generated_tokens - 1) / s.decode_seconds : 0;
  if (args.json) {
    nlohmann::json out = {
        {"prompt_ids", request.prompt_ids},
        {"ids", result->ids},
        {"text", result->text},
        {"finish_reason", result->finish_reason},
        {"stats",
         {{"prompt_tokens", s.prompt_tokens},
          {"generated_tokens", s.generated_tokens},
          {"prompt_tokens_per_second", prompt_tps},
          {"decode_tokens_per_second", decode_tps},
          {"time_to_first_token_ms", s.ttft_seconds * 1e3},
          {"peak_rss_mib", peak_rss_mib()},
          {"seed", request.sampling.seed}}},
    };
    if (args.dump_logits) out["last_logits"] = result->last_logits;
    std::cout << out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    std::fputc('\n', stdout);
  }
  fmt::print(stderr, "kiln: prompt {} tok at {:.1f} tok/s | decode {} tok at {:.1f} tok/s | ttft {:.2f} ms | peak RSS {:.1f} MiB | {}\n",
             s.prompt_tokens, prompt_tps, s.generated_tokens, decode_tps, s.ttft_seconds * 1e3, peak_rss_mib(),
             result->finish_reason);
  return 0;
}

// ---- inspect ----
// "fp16: 23040 bytes per token, 90.0 MiB per 4096-token sequence": the KV cache a run allocates.
std::string describe_kv_cache(const nlohmann::json& meta, const std::string& backend) {
  const auto kv = engine_kv_cache_dtype(meta);
  if (!kv.ok()) return "unreadable: " + kv.error().message;
  std::string name;
  KvCacheDtype dtype = kv->value_or(KvCacheDtype::Fp32);
  try {
    if (backend == "cuda" && !kv->has_value()) {
      dtype = KvCacheDtype::Fp16;  // 2 bytes, as bf16
      name = "activation dtype (" + meta.at("build").at("dtype").get<std::string>() + ")";
    } else {
      name = std::string(kv_cache_dtype_name(dtype)) + (kv->has_value() ? "" : " (no build.kv_cache: the default)");
    }
    const auto& m = meta.at("model");
    const int64_t per_token = kv_cache_bytes_per_token(dtype, m.at("num_layers").get<int64_t>(),
                                                       m.at("num_kv_heads").get<int64_t>(), m.at("head_dim").get<int64_t>());
    const int64_t max_seq_len = meta.at("profile").at("max_seq_len").get<int64_t>();
    return fmt::format("{}: {} bytes per token, {:.1f} MiB per {}-token sequence", name, per_token,
                       static_cast<double>(per_token * max_seq_len) / 1048576.0, max_seq_len);
  } catch (const nlohmann::json::exception&) {
    return name;
  }
}

int run_inspect(const std::string& path) {
  auto engine = load_engine(path, LoadOptions{});
  if (!engine.ok()) return fail(engine.error());
  const EngineHeader& h = engine->header;
  const auto& meta = engine->metadata;
  fmt::print("engine        {}\n", path);
  fmt::print("format        version {}, kiln {}\n", h.format_version, h.kiln_version);
  fmt::print("backend       {} ({})\n", h.backend, h.device_arch);
  fmt::print("file          {} bytes, metadata {} bytes, data {} bytes, checksum {:016x} (verified)\n", h.file_bytes,
             h.metadata_bytes, h.data_bytes, h.checksum);
  for (const char* section : {"model", "profile", "build", "tokenizer"}) {
    if (!meta.contains(section)) continue;
    nlohmann::json shown = meta[section];
    // The per-tensor GGUF table gets its own section below, not one line.
    if (shown.is_object() && shown.contains("checkpoint_quant") && shown["checkpoint_quant"].is_object()) {
      shown["checkpoint_quant"].erase("gguf_tensors");
    }
    fmt::print("{:<14}{}\n", section, shown.dump());
  }
  fmt::print("{:<14}{}\n", "kv cache", describe_kv_cache(meta, h.backend));
  auto graph = Graph::from_json(meta.value("graph", nlohmann::json::object()));
  if (!graph.ok()) return fail(graph.error().with_context(path));
  fmt::print("\ngraph: {} nodes, {} values\n", graph->nodes.size(), graph->values.size());
  for (const Node& n : graph->nodes) {
    std::string inputs;
    for (const ValueRef& r : n.inputs) {
      const Value& v = graph->values[r.value];
      inputs += r.col_offset == 0 && r.width == v.width ? fmt::format(" {}", v.name)
                                                         : fmt::format(" {}[{}:{}]", v.name, r.col_offset, r.col_offset + r.width);
    }
    fmt::print("  {:<18} {:<28} ->{} -> {} [{}]\n", op_name(n.op), n.name, inputs, graph->values[n.output].name,
               graph->values[n.output].width);
    const std::string decode = kernels_for_node(h.backend, *graph, n, true);
    const std::string prefill = kernels_for_node(h.backend, *graph, n, false);
    fmt::print("  {:<18} kernels: {}\n", "", decode == prefill ? decode : "decode " + decode + " | prefill " + prefill);
  }
  // Quantized weights: layout, bits per weight (scales and mins included) and bytes of each.
  int64_t quant_params = 0, quant_bytes = 0, matrix_params = 0, matrix_bytes = 0;
  bool any_quant = false;
  for (const auto& [name, info] : graph->weights) {
    if (info.shape.size() != 2) continue;
    int64_t bytes = 0;
    for (const StoredTensor& part : stored_tensors(name, info)) {
      const TensorView* t = engine->find(part.name);
      bytes += t ? static_cast<int64_t>(t->nbytes) : 0;
    }
    const int64_t params = info.shape[0] * info.shape[1];
    matrix_params += params;
    matrix_bytes += bytes;
    if (!info.quant) continue;
    if (!any_quant) fmt::print("\nquantized weights:\n");
    any_quant = true;
    quant_params += params;
    quant_bytes += bytes;
    fmt::print("  {:<52} {:<26} {:>6.3f} bits/weight {:>12} bytes\n", name, quant_describe(*info.quant, info.shape[1]),
               8.0 * static_cast<double>(bytes) / static_cast<double>(params), bytes);
  }
  if (any_quant) {
    fmt::print("  quantized: {} parameters in {:.2f} MiB ({:.3f} bits/weight); all matrices: {:.2f} MiB ({:.3f} bits/weight)\n",
               quant_params, quant_bytes / 1048576.0, 8.0 * quant_bytes / static_cast<double>(quant_params),
               matrix_bytes / 1048576.0, 8.0 * matrix_bytes / static_cast<double>(std::max<int64_t>(matrix_params, 1)));
  }
  // A GGUF build: each source tensor's GGML type and the kiln layout it became.
  nlohmann::json gguf_tensors;
  if (meta.contains("build") && meta["build"].is_object() && meta["build"].contains("checkpoint_quant") &&
      meta["build"]["checkpoint_quant"].is_object() && meta["build"]["checkpoint_quant"].contains("gguf_tensors")) {
    gguf_tensors = meta["build"]["checkpoint_quant"]["gguf_tensors"];
  }
  if (gguf_tensors.is_object() && !gguf_tensors.empty()) {
    fmt::print("\nGGUF source tensors (type -> kiln layout):\n");
    for (const auto& [gguf_name, layout] : gguf_tensors.items()) {
      fmt::print("  {:<52} {}\n", gguf_name, layout.is_string() ? layout.get<std::string>() : layout.dump());
    }
  }
  fmt::print("\ntensors:\n");
  uint64_t total = 0;
  std::map<std::string, uint64_t> by_dtype;
  for (const auto& [name, t] : engine->tensors) {
    std::string shape;
    for (size_t i = 0; i < t.shape.size(); ++i) shape += (i ? "x" : "") + std::to_string(t.shape[i]);
    fmt::print("  {:<52} {:<5} {:<14} {:>12} bytes\n", name, dtype_name(t.dtype), shape, t.nbytes);
    total += t.nbytes;
    by_dtype[std::string(dtype_name(t.dtype))] += t.nbytes;
  }
  fmt::print("\ntotal: {} tensors, {} bytes ({:.2f} MiB)", engine->tensors.size(), total, total / 1048576.0);
  for (const auto& [dt, bytes] : by_dtype) fmt::print(", {} {:.2f} MiB", dt, bytes / 1048576.0);
  fmt::print("\n");
  return 0;
}

// ---- tokenize ----
Result<Tokenizer> open_tokenizer_for(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    for (const char* name : {"tokenizer.json", "tokenizer.model"}) {
      if (fs::exists(fs::path(path) / name, ec)) return Tokenizer::from_file((fs::path(path) / name).string());
    }
    return make_error("{}: no tokenizer.json or tokenizer.model in this directory", path);
  }
  auto file = MappedFile::open(path);
  if (!file.ok()) return file.error();
  if ((*file)->size() >= sizeof(kEngineMagic) && std::memcmp((*file)->data(), kEngineMagic, sizeof(kEngineMagic)) == 0) {
    KILN_ASSIGN(LoadedEngine engine, load_engine(path, LoadOptions{}));
    KILN_ASSIGN(std::optional<Tokenizer> tok, tokenizer_from_engine(engine));
    if (!tok) return make_error("{}: engine has no tokenizer", path);
    return std::move(*tok);
  }
  return Tokenizer::from_file(path);
}

int run_tokenize(const std::string& source, bool bos, const std::optional<std::string>& text_arg) {
  auto tok = open_tokenizer_for(source);
  if (!tok.ok()) return fail(tok.error());
  std::string text;
  if (text_arg) {
    text = *text_arg;
  } else {
    std::ostringstream ss;
    ss << std::cin.rdbuf();
    text = ss.str();
  }
  std::cout << nlohmann::json(tok->encode(text, bos)).dump() << "\n";
  return 0;
}

}  // namespace

int cli_main(int argc, char** argv) {
  CLI::App app{"kiln: an LLM inference compiler and runtime"};
  app.set_version_flag("--version", std::string("kiln ") + KILN_VERSION);
  app.require_subcommand(1);

  BuildArgs build;
  auto* build_cmd = app.add_subcommand("build", "Compile a model (HF directory or llama2.c .bin) into an engine file");
  build_cmd->add_option("MODEL", build.options.model_path, "HF model directory, GGUF file or llama2.c checkpoint")->required();
  build_cmd->add_option("-o,--output", build.options.output_path, "engine file to write")->required();
  build_cmd->add_option("--dtype", build.options.dtype, "weight precision: fp32, fp16, bf16 or auto")
      ->check(CLI::IsMember({"fp32", "fp16", "bf16", "auto"}));
  build_cmd->add_option("--tokenizer", build.options.tokenizer_path, "tokenizer.json, tokenizer.model or llama2.c tokenizer .bin");
  build_cmd->add_option("--chat-template", build.options.chat_template_path,
                        "Jinja chat template file (overrides the model's tokenizer_config.json / chat_template.jinja)");
  build_cmd->add_option("--max-seq-len", build.options.max_seq_len,
                        "longest sequence the engine serves, which sizes the KV cache (default: the model's context; cuda: at most 4096)")
      ->check(CLI::PositiveNumber);
  build_cmd->add_option("--max-batch", build.options.max_batch, "most sequences at once")->check(CLI::PositiveNumber);
  build_cmd->add_option("--backend", build.options.backend, "target backend: cpu or cuda")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  build_cmd->add_option("--arch", build.options.device_arch, "cuda: target GPU architecture, e.g. sm_90 (default: the GPU present)");
  build_cmd->add_option("--profile", build.options.profile, "shape profile, e.g. batch=1:8:64,seq=1:512:4096 (min:opt:max)");
  build_cmd->add_flag("--no-fuse{false}", build.options.fuse, "run no fusion pass (q/k/v, gate/up, add+norm, rope, swiglu into down)");
  build_cmd->add_flag("--no-tune{false}", build.options.tune, "cuda: skip timing kernel tactics on the GPU");
  build_cmd->add_option("--quant", build.options.quant,
                        "weight quantization: none, int8 (per channel), int4 (group-wise, AWQ-calibrated), int4-rtn, or w8a8 "
                        "(SmoothQuant int8 weights and per-token int8 activations)")
      ->check(CLI::IsMember({"none", "int8", "int4", "int4-rtn", "w8a8", "fp8"}));
  build_cmd->add_option("--kv-cache", build.options.kv_cache,
                        "KV cache precision: auto (cpu: fp16 for fp16/bf16 engines, fp32 for fp32 ones; cuda: the activation "
                        "dtype), fp32, fp16 or int8 (cpu; per token and head scales)")
      ->check(CLI::IsMember({"auto", "fp32", "f32", "fp16", "f16", "int8"}));
  build_cmd->add_option("--group-size", build.options.group_size, "weights per scale along K (multiple of 32; default: int4 128, int8 one scale per output channel)")
      ->check(CLI::PositiveNumber);
  build_cmd->add_option("--calib", build.options.calib_path,
                        "calibration prompts: a text file (paragraphs) or JSONL ({\"text\": ...} or {\"prompt\": ...}); default: built-in");
  build_cmd->add_option("--calib-method", build.options.calib_method,
                        "w8a8: static activation scales by minmax, percentile (99.99%) or entropy (KL, as TensorRT); "
                        "default: dynamic per-token scales")
      ->check(CLI::IsMember({"minmax", "percentile", "entropy"}));
  build_cmd->add_option("--calib-cache", build.options.calib_cache,
                        "calibration results file: reused (skipping calibration) when it exists and was made for this "
                        "model and these settings, written after calibration otherwise");
  build_cmd->add_option("--calib-samples", build.options.calib_samples, "calibration prompts to use (default 32)")
      ->check(CLI::PositiveNumber);
  build_cmd->add_option("--max-quant-error", build.options.max_quant_error,
                        "keep a matrix unquantized when its relative output error on the calibration prompts exceeds this "
                        "(default 0.05 int8, 0.25 int4; 0: never, and int8 / int4-rtn then skip calibration)")
      ->check(CLI::NonNegativeNumber);
  build_cmd->add_flag("--gptq", build.options.gptq,
                      "quantize with GPTQ: each column's rounding error moved onto the columns not yet quantized, "
                      "weighted by the calibration inputs (needs calibration; int8, int4, w8a8)");
  build_cmd->add_option("--keep-fp16", build.options.keep_fp16,
                        "keep weights whose name contains PATTERN unquantized (repeatable), e.g. layers.0.");

  RunArgs run;
  auto* run_cmd = app.add_subcommand("run", "Generate text from an engine");
  run_cmd->add_option("ENGINE", run.engine, "engine file")->required();
  auto* prompt_opt = run_cmd->add_option("-p,--prompt", run.prompt, "prompt text (BOS is added)");
  auto* ids_opt = run_cmd->add_option("--prompt-ids", run.prompt_ids, "prompt as comma-separated ids, used verbatim");
  auto* chat_opt = run_cmd->add_option("--chat", run.chat, "a user message, through the engine's chat template");
  run_cmd->add_option("--system", run.system, "with --chat: a system message before it")->needs(chat_opt);
  chat_opt->excludes(prompt_opt)->excludes(ids_opt);
  prompt_opt->excludes(ids_opt);
  run_cmd->add_option("-n,--max-tokens", run.max_new_tokens, "tokens to generate")->check(CLI::NonNegativeNumber);
  run_cmd->add_option("--temperature", run.temperature, "0 = greedy")->check(CLI::NonNegativeNumber);
  run_cmd->add_option("--top-k", run.top_k, "keep the k most likely tokens (0 = off)")->check(CLI::NonNegativeNumber);
  run_cmd->add_option("--top-p", run.top_p, "nucleus sampling mass (1 = off)")->check(CLI::Range(0.0, 1.0));
  run_cmd->add_option("--min-p", run.min_p, "drop tokens below min_p * p_max (0 = off)")->check(CLI::Range(0.0, 1.0));
  run_cmd->add_option("--repetition-penalty", run.repetition_penalty, "penalty for seen tokens (1 = off)")->check(CLI::PositiveNumber);
  run_cmd->add_option("--seed", run.seed, "random seed (same seed, same output)")->check(CLI::NonNegativeNumber);
  run_cmd->add_option("--stop", run.stop, "stop string (repeatable)");
  run_cmd->add_option("-t,--threads", run.threads, "CPU threads (0 = all cores)")->check(CLI::NonNegativeNumber);
  run_cmd->add_option("--max-step-tokens", run.max_step_tokens, "prompt tokens per prefill step (default 512)")
      ->check(CLI::PositiveNumber);
  run_cmd->add_flag("--json", run.json, "print one JSON object instead of streaming text");
  run_cmd->add_flag("--dump-logits", run.dump_logits, "with --json: include the last prompt position's logits");
  run_cmd->add_flag("--ignore-eos", run.ignore_eos, "keep generating past EOS");
  run_cmd->add_flag("--no-verify", run.no_verify, "skip the engine checksum");

  std::string inspect_path;
  auto* inspect_cmd = app.add_subcommand("inspect", "Show an engine's header, graph and tensors");
  inspect_cmd->add_option("ENGINE", inspect_path, "engine file")->required();

  std::string tokenize_source;
  bool tokenize_bos = false;
  std::optional<std::string> tokenize_text;
  auto* tokenize_cmd = app.add_subcommand("tokenize", "Print the token ids of a text as a JSON array");
  tokenize_cmd->add_option("SOURCE", tokenize_source, "model directory, tokenizer.json, tokenizer.model, llama2.c tokenizer or engine")->required();
  tokenize_cmd->add_option("TEXT", tokenize_text, "text (read from stdin when absent)");
  tokenize_cmd->add_flag("--bos", tokenize_bos, "prepend BOS");

  BenchArgs bench;
  auto* bench_cmd = add_bench_command(app, bench);

  EvalArgs eval;
  auto* eval_cmd = add_eval_command(app, eval);

  ServeArgs serve;
  auto* serve_cmd = add_serve_command(app, serve);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (run_cmd->parsed() && run.prompt_ids.empty() && prompt_opt->count() == 0 && chat_opt->count() == 0) {
    return fail(make_error("run: give a prompt with -p TEXT, --chat TEXT or --prompt-ids 1,2,3"));
  }
  if (run_cmd->parsed() && chat_opt->count() > 0 && run.chat.empty()) return fail(make_error("run: --chat needs a message"));
  if (build_cmd->parsed()) return run_build(build);
  if (run_cmd->parsed()) return run_run(run);
  if (inspect_cmd->parsed()) return run_inspect(inspect_path);
  if (tokenize_cmd->parsed()) return run_tokenize(tokenize_source, tokenize_bos, tokenize_text);
  if (bench_cmd->parsed()) return run_bench_command(bench);
  if (eval_cmd->parsed()) return run_eval_command(eval);
  if (serve_cmd->parsed()) return run_serve_command(serve);
  return 1;
}

}  // namespace kiln
