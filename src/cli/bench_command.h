// `kiln bench`: the command-line face of runtime/benchmark.h (options, engine loading, table or JSON).
#pragma once

#include <cstdint>
#include <string>

#include <CLI/CLI.hpp>

#include "runtime/benchmark.h"

namespace kiln {

struct BenchArgs {
  std::string engine;
  BenchOptions options;
  std::string backend;           // empty: the backend named in the engine's header
  int threads = 0;
  int64_t max_step_tokens = 0;   // 0: the backend's default token budget per step
  bool json = false;
  bool no_verify = false;
};

// Adds the `bench` subcommand, writing into `args`; returns it so the caller can test parsed().
CLI::App* add_bench_command(CLI::App& app, BenchArgs& args);

// Runs it; returns the process exit status (errors print one line "kiln: error: ...").
int run_bench_command(const BenchArgs& args);

}  // namespace kiln
