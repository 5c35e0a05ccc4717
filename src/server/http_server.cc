#include "server/http_server.h"

#include <fmt/format.h>
#include <httplib.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <optional>
#include <thread>

#include "server/generation_endpoint.h"
#include "server/openai_response.h"
#include "server/playground.h"

namespace kiln {

namespace {

void send_json(httplib::Response& res, int status, const nlohmann::ordered_json& body) {
  res.status = status;
  res.set_content(dump_json(body), "application/json");
}

}  // namespace

void send_api_error(httplib::Response& res, const ApiError& error) {
  send_json(res, error.status, error_json(error));
}

struct HttpServer::Impl {
  Impl(ModelRegistry& r, const ServerOptions& o, ModelRepository* repo)
      : registry(r), options(o), repository(repo) {}

  void install_routes();
  void install_repository_routes();
  void handle_models(const httplib::Request& req, httplib::Response& res);

  ModelRegistry& registry;
  ModelRepository* repository;
  ServerOptions options;
  httplib::Server http;
  std::atomic<bool> draining{false};
  std::atomic<bool> serve_entered{false};
  int listen_fd = -1;  // the listening socket, seen through httplib's socket-options hook
};

HttpServer::HttpServer(ModelRegistry& registry, const ServerOptions& options, ModelRepository* repository)
    : impl_(std::make_unique<Impl>(registry, options, repository)) {
  httplib::Server& http = impl_->http;
  const int threads =
      options.http_threads > 0 ? options.http_threads : static_cast<int>(options.max_queue) + 16;
  // Bounded: at most `threads` connections are served at once; more wait in the accept queue.
  http.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  http.set_read_timeout(options.read_timeout_seconds, 0);
  http.set_write_timeout(options.write_timeout_seconds, 0);
  http.set_keep_alive_timeout(options.keep_alive_timeout_seconds);
  http.set_payload_max_length(static_cast<size_t>(options.max_body_bytes));
  // Debian's httplib is a compiled library whose listen() backlog is 5: a burst of concurrent clients
  // overflows the accept queue and connections fail ("Read" errors seen with 32 clients). The hook
  // runs on the socket before bind; bind() below re-listens on it with the system's maximum.
  http.set_socket_options([impl = impl_.get()](socket_t sock) {
    httplib::default_socket_options(sock);
    impl->listen_fd = sock;
  });
  impl_->install_routes();
  if (repository) impl_->install_repository_routes();
}

HttpServer::~HttpServer() = default;

void HttpServer::Impl::install_routes() {
  // Before routing (and before the body is read): draining and authentication.
  http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    // The playground page is open: it asks for the key itself.
    const bool open_route = req.path == "/health" || req.path == "/metrics" || req.path == "/";
    if (draining.load() && !open_route) {
      res.set_header("Connection", "close");
      send_api_error(res, ApiError{503, "the server is shutting down", "server_error", "", "shutting_down"});
      return httplib::Server::HandlerResponse::Handled;
    }
    if (!options.api_key.empty() && !open_route &&
        req.get_header_value("Authorization") != "Bearer " + options.api_key) {
      send_api_error(res, ApiError{401,
                                   req.has_header("Authorization")
                                       ? "Incorrect API key provided."
                                       : "Missing API key: send 'Authorization: Bearer KEY'.",
                                   "invalid_request_error", "", "invalid_api_key"});
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  // Every error response without a body of ours (httplib's own 400, 404 and 413) gets one in
  // OpenAI's shape.
  http.set_error_handler(
      httplib::Server::HandlerWithResponse([this](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        ApiError e{res.status, "", "invalid_request_error", "", ""};
        switch (res.status) {
          case 404:
            e.message = fmt::format("no route for {} {}", req.method, req.path);
            e.type = "not_found_error";
            break;
          case 413:
            e.message = fmt::format("request body larger than {} bytes", options.max_body_bytes);
            e.code = "request_too_large";
            break;
          case 400:
            e.message = "malformed HTTP request";
            break;
          default:
            e.message = fmt::format("HTTP error {}", res.status);
            break;
        }
        send_api_error(res, e);
        return httplib::Server::HandlerResponse::Handled;
      }));
  http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "unknown exception";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    send_api_error(res, ApiError{500, "internal error: " + what, "server_error", "", ""});
  });

  http.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
    handle_generation(registry, Endpoint::Completions, req, res);
  });
  http.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
    handle_generation(registry, Endpoint::ChatCompletions, req, res);
  });
  http.Get("/v1/models",
           [this](const httplib::Request& req, httplib::Response& res) { handle_models(req, res); });
  http.Get("/v1/models/(.+)",
           [this](const httplib::Request& req, httplib::Response& res) { handle_models(req, res); });
  http.Get("/", [](const httplib::Request&, httplib::Response& res) {
    const std::string_view page = playground_html();
    res.set_content(page.data(), page.size(), "text/html; charset=utf-8");
  });
  http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    if (draining.load()) {
      send_json(res, 503, {{"status", "shutting_down"}});
    } else {
      send_json(res, 200, {{"status", "ok"}});
    }
  });
  http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    std::vector<NamedMetrics> models;
    const std::vector<ModelRegistry::Entry> entries = registry.entries();
    for (const ModelRegistry::Entry& e : entries) models.push_back({e.worker->name(), &e.worker->metrics()});
    res.set_content(render_prometheus(models), "text/plain; version=0.0.4; charset=utf-8");
  });

  // Known paths with another method: 405 naming the allowed one (httplib alone would say 404).
  auto not_allowed = [](const char* allow) {
    return [allow](const httplib::Request& req, httplib::Response& res) {
      res.set_header("Allow", allow);
      send_api_error(
          res, ApiError{405, fmt::format("method {} not allowed on {}: use {}", req.method, req.path, allow),
                        "invalid_request_error", "", "method_not_allowed"});
    };
  };
  for (const char* path : {"/v1/completions", "/v1/chat/completions"}) {
    http.Get(path, not_allowed("POST"));
    http.Put(path, not_allowed("POST"));
    http.Patch(path, not_allowed("POST"));
    http.Delete(path, not_allowed("POST"));
  }
  for (const char* path : {"/v1/models", "/v1/models/(.+)", "/health", "/metrics"}) {
    http.Post(path, not_allowed("GET"));
    http.Put(path, not_allowed("GET"));
    http.Patch(path, not_allowed("GET"));
    http.Delete(path, not_allowed("GET"));
  }
}

void HttpServer::Impl::install_repository_routes() {
  http.Get("/v1/repository/index", [this](const httplib::Request&, httplib::Response& res) {
    const Result<std::vector<ModelRepository::ModelEntry>> index = repository->index();
    if (!index.ok()) return send_api_error(res, ApiError{500, index.error().message, "server_error", "", ""});
    nlohmann::ordered_json data = nlohmann::ordered_json::array();
    for (const ModelRepository::ModelEntry& e : *index) {
      data.push_back(
          {{"name", e.name},
           {"versions", e.versions},
           {"loaded_version", e.loaded ? nlohmann::ordered_json(*e.loaded) : nlohmann::ordered_json()},
           {"pinned_versions", e.pinned},
           {"state", e.loaded ? "READY" : "UNAVAILABLE"}});
    }
    send_json(res, 200, {{"object", "list"}, {"data", std::move(data)}});
  });
  http.Post("/v1/repository/models/([^/]+)/load", [this](const httplib::Request& req,
                                                         httplib::Response& res) {
    const std::string key = req.matches[1].str();  // "model" or "model@version"
    const auto split = ModelRepository::split_key(key);
    if (!split.ok()) return send_api_error(res, invalid_param("model", split.error().message));
    const std::string& name = split->first;
    std::optional<int64_t> version = split->second;
    if (!req.body.empty()) {
      const nlohmann::json body = nlohmann::json::parse(req.body, nullptr, /*allow_exceptions=*/false);
      if (body.is_discarded() || !body.is_object())
        return send_api_error(res, invalid_param("", "the body must be a JSON object like {\"version\": 2}"));
      if (body.contains("version") && !body["version"].is_null()) {
        if (!body["version"].is_number_integer())
          return send_api_error(res, invalid_param("version", "'version' must be an integer"));
        if (version && *version != body["version"].get<int64_t>())
          return send_api_error(res, invalid_param("version", "'version' disagrees with the one after '@'"));
        version = body["version"].get<int64_t>();
      }
    }
    // Unknown model or version: 404; an engine that fails to load: 500 (the old version keeps serving).
    const Result<std::vector<ModelRepository::ModelEntry>> index = repository->index();
    if (!index.ok()) return send_api_error(res, ApiError{500, index.error().message, "server_error", "", ""});
    const auto entry = std::find_if(index->begin(), index->end(),
                                    [&](const ModelRepository::ModelEntry& e) { return e.name == name; });
    if (entry == index->end() || (version && std::find(entry->versions.begin(), entry->versions.end(),
                                                       *version) == entry->versions.end())) {
      return send_api_error(
          res, ApiError{404,
                        version ? fmt::format("the repository has no model '{}' version {}", name, *version)
                                : fmt::format("the repository has no model '{}'", name),
                        "invalid_request_error", "model", "model_not_found"});
    }
    if (Status loaded = repository->load(key, version); !loaded.ok())
      return send_api_error(res,
                            ApiError{500, loaded.error().message, "server_error", "", "model_load_failed"});
    send_json(res, 200,
              {{"name", key}, {"version", version.value_or(entry->versions.back())}, {"state", "READY"}});
  });
  http.Post("/v1/repository/models/([^/]+)/unload",
            [this](const httplib::Request& req, httplib::Response& res) {
              const std::string name = req.matches[1].str();
              if (Status unloaded = repository->unload(name); !unloaded.ok()) {
                return send_api_error(res, ApiError{404, unloaded.error().message, "invalid_request_error",
                                                    "model", "model_not_found"});
              }
              send_json(res, 200, {{"name", name}, {"state", "UNAVAILABLE"}});
            });
}

void HttpServer::Impl::handle_models(const httplib::Request& req, httplib::Response& res) {
  auto model_json = [](const ModelRegistry::Entry& e) {
    return nlohmann::ordered_json{
        {"id", e.worker->name()}, {"object", "model"}, {"created", e.created}, {"owned_by", "kiln"}};
  };
  if (req.matches.size() > 1) {
    const std::string name = req.matches[1].str();
    for (const ModelRegistry::Entry& e : registry.entries()) {
      if (e.worker->name() == name) return send_json(res, 200, model_json(e));
    }
    return send_api_error(res, ApiError{404, fmt::format("The model '{}' does not exist", name),
                                        "invalid_request_error", "model", "model_not_found"});
  }
  nlohmann::ordered_json data = nlohmann::ordered_json::array();
  for (const ModelRegistry::Entry& e : registry.entries()) data.push_back(model_json(e));
  send_json(res, 200, {{"object", "list"}, {"data", std::move(data)}});
}

Result<int> HttpServer::bind() {
  const ServerOptions& o = impl_->options;
  int port = o.port;
  if (o.port == 0) {
    port = impl_->http.bind_to_any_port(o.host);
    if (port <= 0) return make_error("cannot bind to {} (any port)", o.host);
  } else if (!impl_->http.bind_to_port(o.host, o.port)) {
    return make_error("cannot bind to {}:{} (in use?)", o.host, o.port);
  }
  // A second listen() on a listening socket only changes its backlog (POSIX; Linux applies it).
  if (impl_->listen_fd >= 0 && ::listen(impl_->listen_fd, SOMAXCONN) != 0)
    return make_error("listen on {}:{}: {}", o.host, port, std::strerror(errno));
  return port;
}

void HttpServer::serve() {
  impl_->serve_entered.store(true);
  if (impl_->draining.load()) return;  // shut down before it started
  impl_->http.listen_after_bind();
}

void HttpServer::shutdown(std::chrono::milliseconds grace) {
  impl_->draining.store(true);
  // httplib's stop() does nothing before listening has begun: wait for it when serve() is entering.
  for (int i = 0; i < 1000 && impl_->serve_entered.load() && !impl_->http.is_running(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  impl_->http.stop();  // closes the listening socket; serve() returns once the handlers have
  const auto deadline = std::chrono::steady_clock::now() + grace;
  while (impl_->registry.active_requests() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (impl_->registry.active_requests() > 0) impl_->registry.abort_all("the server is shutting down");
  while (impl_->registry.active_requests() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
}

}  // namespace kiln
