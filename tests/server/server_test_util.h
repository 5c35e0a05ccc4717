// An in-process kiln server over the stories260K engine for the server tests, and small helpers to
// talk to it (httplib::Client, SSE parsing, /metrics scraping).
#pragma once

#include <gtest/gtest.h>
#include <httplib.h>

#include <chrono>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "server/engine_worker.h"
#include "server/http_server.h"
#include "server/model_registry.h"
#include "test_util.h"

namespace kiln::testing {

// Builds stories260K (with its tokenizer) into `dir`; returns the engine path.
// `quant` and `kv_cache` as `kiln build --quant / --kv-cache` take them.
inline std::string build_stories260k(const TempDir& dir, int64_t max_seq_len = 256, const std::string& quant = "none",
                                     const std::string& kv_cache = "auto") {
  BuildOptions options;
  options.model_path = shared_path("models/stories260K/stories260K.bin");
  options.tokenizer_path = shared_path("models/stories260K/tok512.bin");
  options.output_path = dir.file("stories260K.kiln");
  options.max_seq_len = max_seq_len;
  options.quant = quant;
  options.kv_cache = kv_cache;
  const auto report = build_engine(options);
  EXPECT_TRUE(report.ok()) << (report.ok() ? "" : report.error().message);
  return options.output_path;
}

inline RuntimeOptions single_thread_runtime() {
  RuntimeOptions runtime;
  runtime.backend_options.num_threads = 1;
  return runtime;
}

// A server on 127.0.0.1 (a free port) serving one engine as model "stories", in this process.
class TestServer {
 public:
  TestServer(const std::string& engine, ServerOptions options, WorkerOptions worker_options = {}) {
    auto worker = EngineWorker::load("stories", engine, single_thread_runtime(), worker_options);
    EXPECT_TRUE(worker.ok()) << (worker.ok() ? "" : worker.error().message);
    if (!worker.ok()) return;
    worker_ = *worker;
    EXPECT_TRUE(registry_.add(worker_).ok());
    options.host = "127.0.0.1";
    options.port = 0;
    server_ = std::make_unique<HttpServer>(registry_, options);
    const Result<int> port = server_->bind();
    EXPECT_TRUE(port.ok());
    port_ = port.ok() ? *port : -1;
    thread_ = std::thread([this] { server_->serve(); });
  }
  ~TestServer() { stop(std::chrono::milliseconds(0)); }

  void stop(std::chrono::milliseconds grace) {
    if (!thread_.joinable()) return;
    server_->shutdown(grace);
    thread_.join();
    registry_.stop_all();
  }

  int port() const { return port_; }
  EngineWorker& worker() { return *worker_; }
  std::unique_ptr<httplib::Client> client(const std::string& api_key = "") const {
    auto c = std::make_unique<httplib::Client>("127.0.0.1", port_);
    c->set_read_timeout(60, 0);
    if (!api_key.empty()) c->set_bearer_token_auth(api_key);
    return c;
  }

 private:
  ModelRegistry registry_;
  std::shared_ptr<EngineWorker> worker_;
  std::unique_ptr<HttpServer> server_;
  std::thread thread_;
  int port_ = -1;
};

// The JSON objects of an SSE body, in order; [DONE] becomes the string "[DONE]".
inline std::vector<nlohmann::json> parse_sse(const std::string& body) {
  std::vector<nlohmann::json> events;
  size_t at = 0;
  while (at < body.size()) {
    const size_t end = body.find("\n\n", at);
    EXPECT_NE(end, std::string::npos) << "unterminated event at byte " << at;
    if (end == std::string::npos) break;
    const std::string event = body.substr(at, end - at);
    EXPECT_EQ(event.rfind("data: ", 0), 0u) << event;
    const std::string data = event.substr(6);
    events.push_back(data == "[DONE]" ? nlohmann::json("[DONE]") : nlohmann::json::parse(data));
    at = end + 2;
  }
  return events;
}

// The value of an unlabelled-but-for-model sample in Prometheus text, e.g. kiln_kv_blocks_free.
inline double metric(const std::string& text, const std::string& sample) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(sample, 0) == 0 && line.size() > sample.size() &&
        (line[sample.size()] == '{' || line[sample.size()] == ' ')) {
      return std::stod(line.substr(line.rfind(' ') + 1));
    }
  }
  ADD_FAILURE() << "no sample " << sample;
  return -1;
}

inline std::string scrape(const TestServer& server) {
  auto res = server.client()->Get("/metrics");
  EXPECT_TRUE(res);
  return res ? res->body : "";
}

// Polls /metrics until every KV block is free again and nothing runs (or `timeout` passes).
inline bool wait_until_idle(const TestServer& server,
                            std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    const std::string m = scrape(server);
    if (metric(m, "kiln_kv_blocks_free") == metric(m, "kiln_kv_blocks_total") &&
        metric(m, "kiln_running_sequences") == 0 && metric(m, "kiln_queue_length") == 0)
      return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

}  // namespace kiln::testing
