// The OpenAI-compatible HTTP server (cpp-httplib): routes, authentication, errors in OpenAI's shape,
// backpressure, and graceful shutdown. Each connection is served by a thread of a bounded pool; a
// generation request's thread validates and tokenizes, submits a Job to the model's EngineWorker,
// then writes the results (SSE chunks or one JSON body) as the worker produces them, polling the
// connection so a client that goes away has its request aborted at once. Requests are read under limits
// httplib lacks (a deadline for the head, a minimum body rate, bounded head and body sizes; see
// GuardedStream in http_server.cc), so slow or endless clients cannot hold threads or memory.
//
// Routes: POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /v1/models/{id},
// GET /health, GET /metrics (Prometheus). /health and /metrics need no API key. With a model
// repository also GET /v1/repository/index, POST /v1/repository/models/{name}/load (body: optional
// {"version": N}) and POST /v1/repository/models/{name}/unload.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "common/error.h"
#include "server/model_registry.h"
#include "server/model_repository.h"

namespace kiln {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;                   // 0: any free port
  std::string api_key;               // empty: no authentication
  int64_t max_body_bytes = 1 << 20;  // larger bodies: 413
  int http_threads = 0;              // connections served at once; 0: max queue + 16
  int64_t max_queue = 64;            // for the default thread count (the limit itself is per worker)
  int read_timeout_seconds = 10;     // a client sending nothing for this long is dropped (slowloris)
  int write_timeout_seconds = 10;    // a client reading nothing for this long is dropped, its request aborted
  int keep_alive_timeout_seconds = 5;
  // A request's head (request line and headers, at most 64 KiB) must arrive whole within this of its first
  // byte, and its body at this average rate or faster after a grace of read_timeout_seconds: a client
  // trickling a byte at a time would otherwise hold a connection thread forever (slowloris).
  int head_timeout_seconds = 10;
  int64_t min_body_bytes_per_second = 16 << 10;
};

class HttpServer {
 public:
  // repository: when given, its load/unload routes are served (it must outlive the server).
  HttpServer(ModelRegistry& registry, const ServerOptions& options, ModelRepository* repository = nullptr);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds host:port; returns the port (the chosen one for port 0). Errors: address in use, bad host.
  Result<int> bind();
  // Serves until shutdown(); returns once every connection's handler has returned.
  void serve();
  // From any thread: new requests get 503 and the listening socket closes; requests in flight have
  // `grace` to finish, then are aborted (their clients get an error). Returns when none is active.
  void shutdown(std::chrono::milliseconds grace);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kiln
