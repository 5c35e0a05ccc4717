#include "server/http_server.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <optional>
#include <thread>

#include "server/generation_endpoint.h"
#include "server/openai_response.h"
#include "server/playground.h"

namespace kiln {

namespace {

using Clock = std::chrono::steady_clock;

void send_json(httplib::Response& res, int status, const nlohmann::ordered_json& body) {
  res.status = status;
  res.set_content(dump_json(body), "application/json");
}

// Debian's cpp-httplib (0.11) reads a request with a timeout per recv() only, and bounds neither the
// number of header lines, nor a line without its newline, nor a chunked body (each is read into memory
// whole). A client sending a byte every few seconds therefore holds a connection thread forever
// (slowloris: --http-threads of them and nobody else is served), and one sending headers or chunks
// without end grows the server's memory without end. GuardedServer replaces httplib's connection loop
// (Server::process_and_close_socket, a virtual) to read each request through a GuardedStream, which
// enforces:
//   - the head (request line and headers) arrives whole within head_timeout_seconds of its first byte,
//     is at most kMaxHeadBytes, and every header line is `name: value` ended by CRLF;
//   - the body arrives at min_body_bytes_per_second on average after a grace of read_timeout_seconds
//     (the rule of ASP.NET Kestrel's MinRequestBodyDataRate), and is at most twice max_body_bytes on the
//     wire (chunk framing included; the routes hold the decoded body to max_body_bytes);
//   - no read waits longer than read_timeout_seconds for a byte, and reads stop when the server stops.
// A request that breaks a limit is answered (408, 413, 431 or 400) where httplib gets that far, and its
// connection is closed after a lingering drain so that the client can read the answer (nginx's
// lingering_close: closing a socket with unread input sends a reset, which can destroy the answer).
constexpr size_t kMaxHeadBytes = 64 << 10;
constexpr auto kLingerTime = std::chrono::seconds(2);
constexpr int64_t kStopPollMs = 100;  // how often a waiting read checks that the server still runs

enum class ReadFault { None, HeadTimeout, HeadTooLarge, HeadMalformed, BodyTimeout, BodyTooLarge, Stopping };

class GuardedStream final : public httplib::Stream {
 public:
  GuardedStream(socket_t sock, const ServerOptions& options, const std::atomic<socket_t>& listen_sock)
      : sock_(sock),
        options_(options),
        listen_sock_(listen_sock),
        max_wire_body_(2 * static_cast<uint64_t>(options.max_body_bytes) + kMaxHeadBytes) {}

  // Waits up to `timeout` for the next request's first byte (false: none came, or the server stops),
  // then starts its limits.
  bool next_request(std::chrono::seconds timeout) {
    const auto deadline = Clock::now() + timeout;
    while (pos_ == end_) {
      if (stopping()) return false;
      const int64_t left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) return false;
      const int ready = poll_socket(POLLIN, std::min(left, kStopPollMs));
      if (ready < 0) return false;
      if (ready > 0) break;
    }
    in_head_ = true;
    first_line_ = true;
    line_ = Line{};
    head_bytes_ = 0;
    body_bytes_ = 0;
    fault_ = ReadFault::None;
    close_after_response_ = false;
    answered_ = false;
    head_deadline_ = Clock::now() + std::chrono::seconds(options_.head_timeout_seconds);
    return true;
  }

  ReadFault fault() const { return fault_; }
  // The request's input may not have been read to its end: answer, then close the connection.
  void close_after_response() { close_after_response_ = true; }
  bool must_close() const { return close_after_response_ || fault_ != ReadFault::None; }
  // Something was written since the request began: an answer the client should get to read.
  bool answered() const { return answered_; }

  bool is_readable() const override { return pos_ < end_ || poll_socket(POLLIN, read_timeout_ms()) > 0; }

  bool is_writable() const override {
    return poll_socket(POLLOUT, static_cast<int64_t>(options_.write_timeout_seconds) * 1000) > 0 &&
           peer_open();
  }

  ssize_t read(char* ptr, size_t size) override {
    if (fault_ != ReadFault::None) return -1;
    if (pos_ == end_) {
      const ssize_t n = fill();
      if (n <= 0) return n;
    }
    const size_t n = std::min(size, end_ - pos_);
    if (!account(buffer_ + pos_, n)) return -1;
    std::memcpy(ptr, buffer_ + pos_, n);
    pos_ += n;
    return static_cast<ssize_t>(n);
  }

  ssize_t write(const char* ptr, size_t size) override {
    if (!is_writable()) return -1;
    answered_ = true;
    for (;;) {
      const ssize_t n = ::send(sock_, ptr, size, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      return n;
    }
  }

  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    sockaddr_storage address{};
    socklen_t length = sizeof(address);
    if (::getpeername(sock_, reinterpret_cast<sockaddr*>(&address), &length) == 0)
      describe(address, ip, port);
  }

  void get_local_ip_and_port(std::string& ip, int& port) const override {
    sockaddr_storage address{};
    socklen_t length = sizeof(address);
    if (::getsockname(sock_, reinterpret_cast<sockaddr*>(&address), &length) == 0)
      describe(address, ip, port);
  }

  socket_t socket() const override { return sock_; }

  // Closing with unread input would reset the connection, and the client could lose the answer: send
  // FIN, read and discard until the client closes too (or kLingerTime passes), then close.
  void linger_and_close() {
    ::shutdown(sock_, SHUT_WR);
    const auto deadline = Clock::now() + kLingerTime;
    char sink[4096];
    for (;;) {
      const int64_t left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0 || poll_socket(POLLIN, left) <= 0) break;
      const ssize_t n = ::recv(sock_, sink, sizeof(sink), 0);
      if (n == 0 || (n < 0 && errno != EINTR)) break;
    }
    ::close(sock_);
  }

 private:
  struct Line {
    size_t length = 0;      // bytes so far, CR included
    bool colon = false;     // a ':' seen
    bool bad_name = false;  // nothing or whitespace before the ':' (or a folded continuation line)
    bool cr = false;        // the last byte was CR
  };

  bool stopping() const { return listen_sock_.load() == INVALID_SOCKET; }
  int64_t read_timeout_ms() const { return static_cast<int64_t>(options_.read_timeout_seconds) * 1000; }

  int poll_socket(short events, int64_t timeout_ms) const {
    pollfd p{sock_, events, 0};
    for (;;) {
      const int r = ::poll(&p, 1, static_cast<int>(std::clamp<int64_t>(timeout_ms, 0, 1 << 30)));
      if (r < 0 && errno == EINTR) continue;
      return r;
    }
  }

  // As httplib's is_socket_alive: readable with nothing to read means the peer closed (or reset).
  bool peer_open() const {
    if (pos_ < end_ || poll_socket(POLLIN, 0) <= 0) return true;
    char byte;
    for (;;) {
      const ssize_t n = ::recv(sock_, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
      if (n < 0 && errno == EINTR) continue;
      return n > 0 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
    }
  }

  static void describe(const sockaddr_storage& address, std::string& ip, int& port) {
    char text[INET6_ADDRSTRLEN] = {};
    if (address.ss_family == AF_INET) {
      const auto& a = reinterpret_cast<const sockaddr_in&>(address);
      ::inet_ntop(AF_INET, &a.sin_addr, text, sizeof(text));
      port = ntohs(a.sin_port);
    } else if (address.ss_family == AF_INET6) {
      const auto& a = reinterpret_cast<const sockaddr_in6&>(address);
      ::inet_ntop(AF_INET6, &a.sin6_addr, text, sizeof(text));
      port = ntohs(a.sin6_port);
    }
    ip = text;
  }

  // When the bytes read so far must all have come: the head's deadline, or the body's at the minimum rate.
  Clock::time_point deadline() const {
    if (in_head_) return head_deadline_;
    const double rate = static_cast<double>(std::max<int64_t>(1, options_.min_body_bytes_per_second));
    return body_start_ + std::chrono::seconds(options_.read_timeout_seconds) +
           std::chrono::duration_cast<Clock::duration>(
               std::chrono::duration<double>(static_cast<double>(body_bytes_) / rate));
  }

  ssize_t fail(ReadFault fault) {
    fault_ = fault;
    return -1;
  }
  bool broke(ReadFault fault) {
    fault_ = fault;
    return false;
  }

  // Refills the buffer from the socket: the bytes read, 0 at the end of the stream, -1 on an error or
  // a broken limit.
  ssize_t fill() {
    const auto byte_deadline = Clock::now() + std::chrono::milliseconds(read_timeout_ms());
    for (;;) {
      if (stopping()) return fail(ReadFault::Stopping);
      const auto now = Clock::now();
      const auto until = std::min(deadline(), byte_deadline);
      if (now >= until) return fail(in_head_ ? ReadFault::HeadTimeout : ReadFault::BodyTimeout);
      const int64_t wait = std::chrono::duration_cast<std::chrono::milliseconds>(until - now).count() + 1;
      const int ready = poll_socket(POLLIN, std::min(wait, kStopPollMs));
      if (ready < 0) return -1;
      if (ready == 0) continue;
      const ssize_t n = ::recv(sock_, buffer_, sizeof(buffer_), 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return n;
      pos_ = 0;
      end_ = static_cast<size_t>(n);
      return n;
    }
  }

  // Counts the bytes handed to httplib against the head's and the body's limits; checks header lines.
  bool account(const char* data, size_t n) {
    size_t i = 0;
    for (; i < n && in_head_; ++i) {
      if (++head_bytes_ > kMaxHeadBytes) return broke(ReadFault::HeadTooLarge);
      const char c = data[i];
      if (c == '\n') {
        const bool blank = line_.length == 1 && line_.cr;
        // httplib checks the request line itself; a header line must be `name: value` ended by CRLF.
        if (!first_line_ && !blank && (!line_.cr || !line_.colon || line_.bad_name))
          return broke(ReadFault::HeadMalformed);
        if (blank && !first_line_) {
          in_head_ = false;
          body_start_ = Clock::now();
        }
        first_line_ = false;
        line_ = Line{};
        continue;
      }
      if (line_.cr) line_.bad_name = true;  // a CR not followed by LF
      ++line_.length;
      line_.cr = c == '\r';
      if (!line_.colon && !line_.cr) {
        if (c == ':') {
          line_.colon = true;
          line_.bad_name = line_.bad_name || line_.length == 1;
        } else if (c == ' ' || c == '\t') {
          line_.bad_name = true;
        }
      }
    }
    body_bytes_ += n - i;
    if (body_bytes_ > max_wire_body_) return broke(ReadFault::BodyTooLarge);
    return true;
  }

  const socket_t sock_;
  const ServerOptions& options_;
  const std::atomic<socket_t>& listen_sock_;
  const uint64_t max_wire_body_;
  char buffer_[4096];
  size_t pos_ = 0, end_ = 0;  // the unread bytes of buffer_

  bool in_head_ = true;
  bool first_line_ = true;
  Line line_;
  size_t head_bytes_ = 0;
  uint64_t body_bytes_ = 0;
  Clock::time_point head_deadline_;
  Clock::time_point body_start_;
  ReadFault fault_ = ReadFault::None;
  bool close_after_response_ = false;
  bool answered_ = false;
};

// The stream of the request this thread serves (httplib runs the route and error handlers on it).
thread_local GuardedStream* t_stream = nullptr;

// For answers sent before the body is read: the rest of the input is not a request.
void close_after_response(httplib::Response& res) {
  res.set_header("Connection", "close");
  if (t_stream) t_stream->close_after_response();
}

class GuardedServer final : public httplib::Server {
 public:
  explicit GuardedServer(const ServerOptions& options) : options_(options) {}

 private:
  // httplib's keep-alive loop (process_server_socket_core) over a GuardedStream.
  bool process_and_close_socket(socket_t sock) override {
    GuardedStream stream(sock, options_, svr_sock_);
    t_stream = &stream;
    bool ok = false;
    for (size_t left = keep_alive_max_count_;
         left > 0 && stream.next_request(std::chrono::seconds(keep_alive_timeout_sec_)); --left) {
      bool connection_closed = false;
      ok = process_request(stream, /*close_connection=*/left == 1, connection_closed, nullptr);
      if (!ok || connection_closed || stream.must_close()) break;
    }
    t_stream = nullptr;
    if (stream.must_close() && stream.answered() && svr_sock_ != INVALID_SOCKET) {
      stream.linger_and_close();
    } else {
      ::shutdown(sock, SHUT_RDWR);
      ::close(sock);
    }
    return ok;
  }

  const ServerOptions& options_;
};

// Framing that httplib would accept but must not, checked on the head before the body is read: a
// content coding (httplib inflates gzip without a bound: a bomb), a transfer coding other than chunked
// or beside a Content-Length (request smuggling, RFC 9112 section 6.3), a Content-Length that is not
// one decimal number or is over the limit (httplib would read and discard it all before its 413), a
// body without a length (httplib would read it to the end of the connection).
std::optional<ApiError> check_framing(const httplib::Request& req, int64_t max_body_bytes) {
  auto framing_error = [](int status, std::string message, std::string code) {
    return ApiError{status, std::move(message), "invalid_request_error", "", std::move(code)};
  };
  const std::string encoding = req.get_header_value("Content-Encoding");
  if (!encoding.empty() && encoding != "identity") {
    return framing_error(
        415, fmt::format("Content-Encoding '{}' is not supported: send the body uncompressed", encoding),
        "unsupported_content_encoding");
  }
  const size_t lengths = req.get_header_value_count("Content-Length");
  if (req.has_header("Transfer-Encoding")) {
    std::string coding = req.get_header_value("Transfer-Encoding");
    std::transform(coding.begin(), coding.end(), coding.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    if (coding != "chunked" || req.get_header_value_count("Transfer-Encoding") > 1 || lengths > 0) {
      return framing_error(400, "Transfer-Encoding must be chunked, once, and without a Content-Length",
                           "invalid_framing");
    }
    return std::nullopt;
  }
  if (lengths == 0) {
    if (req.method == "POST" || req.method == "PUT" || req.method == "PATCH") {
      return framing_error(411,
                           "a request with a body needs a Content-Length (or Transfer-Encoding: chunked)",
                           "length_required");
    }
    return std::nullopt;
  }
  const std::string length = req.get_header_value("Content-Length");
  bool valid = !length.empty() && length.size() <= 18 &&
               std::all_of(length.begin(), length.end(), [](char c) { return c >= '0' && c <= '9'; });
  for (size_t i = 1; i < lengths; ++i) valid = valid && req.get_header_value("Content-Length", i) == length;
  if (!valid) return framing_error(400, "Content-Length must be one decimal number", "invalid_framing");
  if (std::stoll(length) > max_body_bytes) {
    return framing_error(413, fmt::format("request body larger than {} bytes", max_body_bytes),
                         "request_too_large");
  }
  return std::nullopt;
}

}  // namespace

void send_api_error(httplib::Response& res, const ApiError& error) {
  send_json(res, error.status, error_json(error));
}

struct HttpServer::Impl {
  Impl(ModelRegistry& r, const ServerOptions& o, ModelRepository* repo)
      : registry(r), repository(repo), options(o) {}

  void install_routes();
  void install_repository_routes();
  void handle_models(const httplib::Request& req, httplib::Response& res);

  ModelRegistry& registry;
  ModelRepository* repository;
  ServerOptions options;
  GuardedServer http{options};
  std::atomic<bool> draining{false};
  std::atomic<bool> serve_entered{false};
  int listen_fd = -1;  // the listening socket, seen through httplib's socket-options hook
  // Generation responses whose body is still being written (their httplib::Response not yet
  // destroyed): shutdown waits for them, since httplib's stop() cuts chunked bodies in flight.
  std::atomic<int64_t> open_responses{0};
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
    if (std::optional<ApiError> framing = check_framing(req, options.max_body_bytes)) {
      close_after_response(res);
      send_api_error(res, *framing);
      return httplib::Server::HandlerResponse::Handled;
    }
    // httplib reads a body only for these methods: another's (GET with a body) would be taken for the
    // next request on the connection.
    const bool body_read = req.method == "POST" || req.method == "PUT" || req.method == "PATCH" ||
                           req.method == "DELETE" || req.method == "PRI";
    const std::string length = req.get_header_value("Content-Length");
    if (!body_read && (req.has_header("Transfer-Encoding") || (!length.empty() && length != "0")))
      close_after_response(res);
    if (draining.load() && !open_route) {
      close_after_response(res);
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
        // A request the GuardedStream cut off: httplib says 400; say why.
        switch (t_stream ? t_stream->fault() : ReadFault::None) {
          case ReadFault::HeadTimeout:
          case ReadFault::BodyTimeout:
            res.status = 408;
            break;
          case ReadFault::Stopping:
            res.status = 503;
            break;
          case ReadFault::HeadTooLarge:
            res.status = 431;
            break;
          case ReadFault::BodyTooLarge:
            res.status = 413;
            break;
          case ReadFault::HeadMalformed:
          case ReadFault::None:
            break;
        }
        if (t_stream && t_stream->fault() != ReadFault::None) res.set_header("Connection", "close");
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
            e.message = t_stream && t_stream->fault() == ReadFault::HeadMalformed
                            ? "malformed HTTP request: a header line is not 'name: value' ended by CRLF"
                            : "malformed HTTP request";
            break;
          case 408:
            e.message = "the request did not arrive in time";
            e.code = "request_timeout";
            break;
          case 503:
            e = ApiError{503, "the server is shutting down", "server_error", "", "shutting_down"};
            break;
          case 431:
            e.message =
                fmt::format("the request head (request line and headers) is over {} bytes", kMaxHeadBytes);
            e.code = "request_header_fields_too_large";
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

  // A chunked body's size is known only once read (the GuardedStream bounds it on the wire).
  auto generation = [this](Endpoint endpoint) {
    return [this, endpoint](const httplib::Request& req, httplib::Response& res) {
      if (static_cast<int64_t>(req.body.size()) > options.max_body_bytes) {
        return send_api_error(
            res, ApiError{413, fmt::format("request body larger than {} bytes", options.max_body_bytes),
                          "invalid_request_error", "", "request_too_large"});
      }
      handle_generation(registry, endpoint, req, res);
      if (res.content_provider_) {  // counted until httplib destroys the response, after the last chunk
        ++open_responses;
        res.content_provider_resource_releaser_ =
            [this, inner = std::move(res.content_provider_resource_releaser_)](bool success) {
              if (inner) inner(success);
              --open_responses;
            };
      }
    };
  };
  http.Post("/v1/completions", generation(Endpoint::Completions));
  http.Post("/v1/chat/completions", generation(Endpoint::ChatCompletions));
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
  // New requests already get 503 (draining). Running ones get the grace period, then are aborted
  // (their streams end with an error event); then their responses are let finish writing, and only
  // then is the socket closed: httplib's stop() would cut a chunked body in flight.
  const auto deadline = std::chrono::steady_clock::now() + grace;
  while (impl_->registry.active_requests() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (impl_->registry.active_requests() > 0) impl_->registry.abort_all("the server is shutting down");
  while (impl_->registry.active_requests() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  const auto flush_deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(impl_->options.write_timeout_seconds + 1);
  while (impl_->open_responses.load() > 0 && std::chrono::steady_clock::now() < flush_deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  impl_->http.stop();  // closes the listening socket; serve() returns once the handlers have
}

}  // namespace kiln
