#include "cli/serve_command.h"

#include <fmt/format.h>
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "cli/report_error.h"
#include "server/engine_worker.h"
#include "server/model_registry.h"
#include "server/model_repository.h"

namespace kiln {

CLI::App* add_serve_command(CLI::App& app, ServeArgs& args) {
  auto* cmd = app.add_subcommand("serve", "Serve an engine over an OpenAI-compatible HTTP API");
  auto* engine = cmd->add_option("ENGINE", args.engine, "engine file");
  auto* repo = cmd->add_option("--model-repo", args.model_repo,
                               "serve every model of DIR/<model>/<version>/model.kiln (highest version; "
                               "load/unload over /v1/repository/...)");
  engine->excludes(repo);
  cmd->add_option("--host", args.server.host, "address to listen on")->capture_default_str();
  cmd->add_option("--port", args.server.port, "port (0: any free port, shown when ready)")
      ->check(CLI::Range(0, 65535))
      ->capture_default_str();
  cmd->add_option("--api-key", args.server.api_key, "require 'Authorization: Bearer KEY' on /v1/ routes");
  cmd->add_option("--max-queue", args.server.max_queue, "requests waiting or running at once; more get 503")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--backend", args.backend, "cpu or cuda (the engine must have been built for it)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("-t,--threads", args.threads, "CPU threads (0 = all cores)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--served-model-name", args.served_model_name,
                  "the model's name in the API (default: the engine file's stem)");
  cmd->add_option("--chat-template", args.chat_template_path,
                  "Jinja chat template file replacing the engine's");
  cmd->add_option("--max-body-bytes", args.server.max_body_bytes, "largest request body; larger ones get 413")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--http-threads", args.server.http_threads,
                  "connections served at once (0: max queue + 16)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--shutdown-timeout", args.shutdown_timeout_seconds,
                  "seconds running requests get to finish after SIGINT/SIGTERM")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_flag("--no-verify", args.no_verify, "skip the engine checksum");
  cmd->add_flag("--no-prefix-caching", args.no_prefix_caching, "never share KV blocks between requests");
  cmd->add_option("--static-batching", args.static_batching,
                  "benchmark baseline: admit requests in batches, none joining a running batch; finished "
                  "rows 'drop' out or 'pad' on until the batch ends (as HF generate)")
      ->check(CLI::IsMember({"drop", "pad"}));
  return cmd;
}

namespace {

Result<std::string> read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_error("{}: cannot open", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

RuntimeOptions runtime_options(const ServeArgs& args) {
  RuntimeOptions runtime;
  runtime.backend = args.backend;
  runtime.backend_options.num_threads = args.threads;
  runtime.verify_checksum = !args.no_verify;
  return runtime;
}

Result<std::shared_ptr<EngineWorker>> load_worker(const ServeArgs& args) {
  const RuntimeOptions runtime = runtime_options(args);
  const std::string name = args.served_model_name.empty() ? std::filesystem::path(args.engine).stem().string()
                                                          : args.served_model_name;
  WorkerOptions options;
  options.max_queue = args.server.max_queue;
  options.prefix_caching = !args.no_prefix_caching;
  options.static_batching = !args.static_batching.empty();
  options.pad_finished_rows = args.static_batching == "pad";
  KILN_ASSIGN(std::shared_ptr<EngineWorker> worker, EngineWorker::load(name, args.engine, runtime, options));
  if (!args.chat_template_path.empty()) {
    const Tokenizer* tokenizer = worker->tokenizer();
    if (!tokenizer) return make_error("{}: --chat-template needs an engine with a tokenizer", args.engine);
    KILN_ASSIGN(std::string source, read_text_file(args.chat_template_path));
    Result<ChatTemplate> parsed = ChatTemplate::parse(
        std::move(source), tokenizer->piece(tokenizer->bos_id()), tokenizer->piece(tokenizer->eos_id()));
    if (!parsed.ok()) return parsed.error().with_context(args.chat_template_path);
    worker->set_chat_template(std::move(parsed).value());
  }
  return worker;
}

}  // namespace

int run_serve_command(const ServeArgs& args) {
  if (args.engine.empty() == args.model_repo.empty())
    return fail(make_error("serve: give an ENGINE file or --model-repo DIR"));
  if (!args.model_repo.empty() && (!args.served_model_name.empty() || !args.chat_template_path.empty())) {
    return fail(
        make_error("serve: --served-model-name and --chat-template apply to one ENGINE; a repository's "
                   "models are named by "
                   "their directories and use the templates their engines were built with"));
  }
  // SIGINT and SIGTERM go to one thread that waits for them (sigwait); every other thread, started
  // after this, inherits the blocked mask. A peer closing its socket must not kill the server.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  ModelRegistry registry;
  std::unique_ptr<ModelRepository> repository;
  std::string served;  // for the "serving ..." line
  if (args.model_repo.empty()) {
    auto worker = load_worker(args);
    if (!worker.ok()) return fail(worker.error());
    served = (*worker)->name();
    if (Status added = registry.add(std::move(worker).value()); !added.ok()) return fail(added.error());
  } else {
    WorkerOptions options;
    options.max_queue = args.server.max_queue;
    options.prefix_caching = !args.no_prefix_caching;
    options.static_batching = !args.static_batching.empty();
    options.pad_finished_rows = args.static_batching == "pad";
    repository = std::make_unique<ModelRepository>(args.model_repo, registry, runtime_options(args), options);
    if (Status loaded = repository->load_all(); !loaded.ok()) {
      registry.stop_all();
      return fail(loaded.error());
    }
    for (const ModelRegistry::Entry& e : registry.entries())
      served += (served.empty() ? "" : ",") + e.worker->name();
  }

  HttpServer server(registry, args.server, repository.get());
  const Result<int> port = server.bind();
  if (!port.ok()) {
    registry.stop_all();
    return fail(port.error());
  }

  std::atomic<bool> serve_ended{false};
  std::thread signal_thread([&] {
    int signal_number = 0;
    sigwait(&signals, &signal_number);
    if (serve_ended.load()) return;  // woken by the main thread: serve() failed on its own
    fmt::print(stderr, "kiln: {}: stopping; running requests have {} s to finish\n",
               signal_number == SIGINT ? "SIGINT" : "SIGTERM", args.shutdown_timeout_seconds);
    server.shutdown(std::chrono::milliseconds(static_cast<int64_t>(args.shutdown_timeout_seconds * 1000)));
  });
  fmt::print(stderr, "kiln: serving {} on http://{}:{}\n", served, args.server.host, *port);
  std::fflush(stderr);
  server.serve();
  serve_ended.store(true);
  pthread_kill(signal_thread.native_handle(), SIGTERM);  // no-op in effect when it already returned
  signal_thread.join();
  registry.stop_all();
  fmt::print(stderr, "kiln: stopped\n");
  return 0;
}

}  // namespace kiln
