// `kiln serve`: an OpenAI-compatible HTTP server (server/) over one engine, or over a model repository
// (DIR/<model>/<version>/model.kiln, loaded and unloaded over the API), until SIGINT/SIGTERM.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>

#include "server/http_server.h"

namespace kiln {

struct ServeArgs {
  std::string engine;      // one engine, or
  std::string model_repo;  // a model repository
  ServerOptions server;
  std::string backend;             // empty: the engine's own; else the engine must have been built for it
  int threads = 0;                 // CPU threads of the backend (0: all cores)
  std::string served_model_name;   // empty: the engine file's name without its extension
  std::string chat_template_path;  // replaces the engine's chat template
  double shutdown_timeout_seconds = 30;
  bool no_verify = false;
  bool no_prefix_caching = false;
  std::string static_batching;  // empty: continuous; "drop" or "pad" (SchedulerConfig)
};

// Adds the `serve` subcommand, writing into `args`; returns it so the caller can test parsed().
CLI::App* add_serve_command(CLI::App& app, ServeArgs& args);

// Loads the engine, serves until SIGINT or SIGTERM, then drains: new requests are refused, running
// ones get --shutdown-timeout seconds to finish and are aborted after. Exit status 0 after a signal.
int run_serve_command(const ServeArgs& args);

}  // namespace kiln
