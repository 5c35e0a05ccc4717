// The server end to end, in process, on the real stories260K engine (CPU): a greedy completion
// equals generate() alone (ids and text); 32 concurrent requests, batched by the scheduler, each
// equal their solo result; streamed deltas concatenate to the non-streaming text; a client that
// disconnects mid-stream (or mid non-streaming request) has its request aborted and every KV block
// freed; and the HTTP errors: 503 past --max-queue, 401, 413, 400 on malformed JSON, 404, 405; slow
// heads and bodies cut at their deadlines, and framing httplib would accept refused (411, 413, 415, 431).
#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <mutex>
#include <random>

#include "runtime/generator.h"
#include "server_test_util.h"

namespace kiln {
namespace {

using nlohmann::json;
using testing::TempDir;
using testing::TestServer;

class ServerEndToEnd : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir;
    // 2048 positions: long enough that an ignore_eos request runs for a while (the disconnect tests).
    // KILN_TEST_SERVE_QUANT / KILN_TEST_SERVE_KV_CACHE serve a quantized engine instead (ctest runs the
    // core tests again that way: tests/server/CMakeLists.txt).
    engine_ = new std::string(testing::build_stories260k(*dir_, 2048, testing::env_or("KILN_TEST_SERVE_QUANT", "none"),
                                                         testing::env_or("KILN_TEST_SERVE_KV_CACHE", "auto")));
    RuntimeOptions runtime = testing::single_thread_runtime();
    runtime.backend_options.max_sequences = 1;
    auto model = Model::load(*engine_, runtime);
    ASSERT_TRUE(model.ok()) << model.error().message;
    reference_ = std::move(model).value().release();
  }
  static void TearDownTestSuite() {
    delete reference_;
    delete engine_;
    delete dir_;
  }

  // generate() alone, greedy: the reference every served result is compared with.
  static GenerationResult solo(const std::vector<int32_t>& prompt, int32_t max_tokens) {
    GenerationRequest request;
    request.prompt_ids = prompt;
    request.max_new_tokens = max_tokens;
    request.sampling.temperature = 0.0f;
    auto result = generate(*reference_, request);
    EXPECT_TRUE(result.ok()) << result.error().message;
    return result.ok() ? std::move(result).value() : GenerationResult{};
  }

  static std::vector<int32_t> ids_of(const json& logprobs) {
    std::vector<int32_t> ids;
    for (const json& token : logprobs["tokens"]) {
      const std::string s = token.get<std::string>();
      EXPECT_EQ(s.rfind("token_id:", 0), 0u) << s;
      ids.push_back(std::stoi(s.substr(9)));
    }
    return ids;
  }

  static std::string finish_reason_of(const GenerationResult& r) {
    return r.finish_reason == "eos" || r.finish_reason == "stop" ? "stop" : "length";
  }

  static json post(httplib::Client& client, const std::string& path, const json& body,
                   int expected_status = 200) {
    auto res = client.Post(path, body.dump(), "application/json");
    EXPECT_TRUE(res) << "no response: " << httplib::to_string(res.error());
    if (!res) return json();
    EXPECT_EQ(res->status, expected_status) << res->body;
    if (body.value("stream", false) && res->status == 200) {
      EXPECT_EQ(res->get_header_value("Content-Type"), "text/event-stream");
      return json(testing::parse_sse(res->body));
    }
    return json::parse(res->body);
  }

  static inline TempDir* dir_ = nullptr;
  static inline std::string* engine_ = nullptr;
  static inline Model* reference_ = nullptr;
};

TEST_F(ServerEndToEnd, GreedyCompletionEqualsGenerateAlone) {
  TestServer server(*engine_, ServerOptions{});
  auto client = server.client();
  const std::string prompt = "Once upon a time";
  const std::vector<int32_t> prompt_ids = reference_->tokenizer()->encode(prompt, true);
  const GenerationResult expected = solo(prompt_ids, 60);
  ASSERT_FALSE(expected.ids.empty());
  for (const json& prompt_field : {json(prompt), json(prompt_ids)}) {
    const json body = {{"model", "stories"}, {"prompt", prompt_field}, {"max_tokens", 60},
                       {"temperature", 0},   {"logprobs", 0},          {"return_tokens_as_token_ids", true}};
    const json r = post(*client, "/v1/completions", body);
    ASSERT_EQ(r["choices"].size(), 1u);
    const json& choice = r["choices"][0];
    EXPECT_EQ(r["object"], "text_completion");
    EXPECT_EQ(r["model"], "stories");
    EXPECT_EQ(choice["text"], expected.text);
    EXPECT_EQ(ids_of(choice["logprobs"]), expected.ids);
    EXPECT_EQ(choice["finish_reason"], finish_reason_of(expected));
    EXPECT_EQ(r["usage"]["prompt_tokens"], prompt_ids.size());
    EXPECT_EQ(r["usage"]["completion_tokens"], expected.ids.size());
    EXPECT_EQ(r["usage"]["total_tokens"], prompt_ids.size() + expected.ids.size());
  }
  // Without logprobs the backend draws the tokens (forward_sample): the same text.
  const json r =
      post(*client, "/v1/completions", {{"prompt", prompt}, {"max_tokens", 60}, {"temperature", 0}});
  EXPECT_EQ(r["choices"][0]["text"], expected.text);
}

TEST_F(ServerEndToEnd, ConcurrentRequestsEachEqualTheirSoloResult) {
  TestServer server(*engine_, ServerOptions{});
  std::mt19937 rng(11);
  std::uniform_int_distribution<int32_t> token(3, 511);
  constexpr int kRequests = 32;
  std::vector<std::vector<int32_t>> prompts(kRequests);
  std::vector<int32_t> max_tokens(kRequests);
  std::vector<GenerationResult> expected(kRequests);
  for (int i = 0; i < kRequests; ++i) {
    prompts[i].push_back(1);
    const int length = 1 + static_cast<int>(rng() % 60);
    for (int t = 1; t < length; ++t) prompts[i].push_back(token(rng));
    max_tokens[i] = 5 + static_cast<int32_t>(rng() % 40);
    expected[i] = solo(prompts[i], max_tokens[i]);
  }
  std::vector<json> results(kRequests);
  std::vector<std::thread> clients;
  std::atomic<int> failures{0};
  std::mutex failure_mutex;
  std::vector<std::string> failure_reasons;
  for (int i = 0; i < kRequests; ++i) {
    clients.emplace_back([&, i] {
      auto client = server.client();
      // Every other request streams; a third of them ask for token ids (the host-logits path).
      json body = {
          {"prompt", prompts[i]}, {"max_tokens", max_tokens[i]}, {"temperature", 0}, {"stream", i % 2 == 1}};
      if (i % 3 == 0) {
        body["logprobs"] = 1;
        body["return_tokens_as_token_ids"] = true;
      }
      auto res = client->Post("/v1/completions", body.dump(), "application/json");
      if (!res || res->status != 200) {
        ++failures;
        std::lock_guard<std::mutex> lock(failure_mutex);
        failure_reasons.push_back(res ? std::to_string(res->status) + " " + res->body
                                      : httplib::to_string(res.error()));
        return;
      }
      if (i % 2 == 0) {
        results[i] = json::parse(res->body)["choices"][0];
        return;
      }
      // Streamed: concatenate the deltas (and token ids) into the shape of a whole choice.
      json choice = {{"text", ""}, {"logprobs", {{"tokens", json::array()}}}};
      for (const json& event : testing::parse_sse(res->body)) {
        if (event == "[DONE]") continue;
        const json& c = event["choices"][0];
        choice["text"] = choice["text"].get<std::string>() + c["text"].get<std::string>();
        if (c["logprobs"].is_object()) {
          for (const json& t : c["logprobs"]["tokens"]) choice["logprobs"]["tokens"].push_back(t);
        }
        if (!c["finish_reason"].is_null()) choice["finish_reason"] = c["finish_reason"];
      }
      results[i] = choice;
    });
  }
  for (std::thread& t : clients) t.join();
  ASSERT_EQ(failures.load(), 0) << (failure_reasons.empty() ? "" : failure_reasons.front());
  for (int i = 0; i < kRequests; ++i) {
    EXPECT_EQ(results[i]["text"], expected[i].text) << "request " << i;
    EXPECT_EQ(results[i]["finish_reason"], finish_reason_of(expected[i])) << "request " << i;
    if (i % 3 == 0) EXPECT_EQ(ids_of(results[i]["logprobs"]), expected[i].ids) << "request " << i;
  }
  EXPECT_TRUE(testing::wait_until_idle(server));
  const std::string m = testing::scrape(server);
  EXPECT_EQ(testing::metric(m, "kiln_requests_total{model=\"stories\",status=\"success\"}"), kRequests);
  // KV cache use against its budget: some blocks were held at once, never more than there are.
  const double peak = testing::metric(m, "kiln_kv_blocks_used_peak{model=\"stories\"}");
  EXPECT_GT(peak, 0);
  EXPECT_LE(peak, testing::metric(m, "kiln_kv_blocks_total{model=\"stories\"}"));
  EXPECT_EQ(testing::metric(m, "kiln_kv_blocks_used{model=\"stories\"}"), 0);
  EXPECT_GT(testing::metric(m, "kiln_kv_cache_bytes{model=\"stories\"}"), 0);
}

TEST_F(ServerEndToEnd, StreamedDeltasConcatenateToTheNonStreamingText) {
  TestServer server(*engine_, ServerOptions{});
  auto client = server.client();
  // Sampled (seeded), n = 2, a stop string: the streamed text per choice equals the whole one.
  json body = {
      {"prompt", "Once upon a time"}, {"max_tokens", 80}, {"temperature", 0.9}, {"seed", 7}, {"n", 2},
      {"stop", {"Lily", "\n"}}};
  const json whole = post(*client, "/v1/completions", body);
  body["stream"] = true;
  body["stream_options"] = {{"include_usage", true}};
  const json events = post(*client, "/v1/completions", body);
  std::vector<std::string> texts(2);
  std::vector<std::string> reasons(2);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back(), "[DONE]");
  const json& usage_chunk = events[events.size() - 2];
  EXPECT_TRUE(usage_chunk["choices"].empty());
  EXPECT_EQ(usage_chunk["usage"], whole["usage"]);
  for (size_t e = 0; e + 2 < events.size(); ++e) {
    const json& event = events[e];
    EXPECT_EQ(event["object"], "text_completion");
    EXPECT_TRUE(event["usage"].is_null());
    ASSERT_EQ(event["choices"].size(), 1u);
    const json& c = event["choices"][0];
    const int index = c["index"];
    EXPECT_TRUE(reasons[index].empty()) << "a chunk after choice " << index << "'s finish_reason";
    texts[index] += c["text"].get<std::string>();
    if (!c["finish_reason"].is_null()) reasons[index] = c["finish_reason"];
  }
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(texts[i], whole["choices"][i]["text"]) << "choice " << i;
    EXPECT_EQ(reasons[i], whole["choices"][i]["finish_reason"]) << "choice " << i;
    EXPECT_EQ(texts[i].find("Lily"), std::string::npos);
  }
  EXPECT_NE(whole["choices"][0]["text"], whole["choices"][1]["text"]) << "seed and seed + 1 should differ";
  // Asking for logprobs moves sampling to the host (Sampler::sample instead of forward_sample):
  // the same seed still draws the same tokens.
  body.erase("stream");
  body.erase("stream_options");
  body["logprobs"] = 2;
  const json with_logprobs = post(*client, "/v1/completions", body);
  for (int i = 0; i < 2; ++i) EXPECT_EQ(with_logprobs["choices"][i]["text"], whole["choices"][i]["text"]);
}

TEST_F(ServerEndToEnd, ClientDisconnectMidStreamAbortsAndFreesEveryBlock) {
  TestServer server(*engine_, ServerOptions{});
  ASSERT_TRUE(testing::wait_until_idle(server));
  // A long request (the whole context, EOS ignored), dropped after its first chunks.
  const json body = {
      {"prompt", "Once upon a time"}, {"ignore_eos", true}, {"temperature", 0}, {"stream", true}};
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  int chunks = 0;
  req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) { return ++chunks < 3; };
  const auto started = std::chrono::steady_clock::now();
  auto res = server.client()->send(req);
  EXPECT_FALSE(res) << "the client cancelled the body";
  EXPECT_EQ(chunks, 3);
  EXPECT_TRUE(testing::wait_until_idle(server));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  const std::string m = testing::scrape(server);
  EXPECT_EQ(testing::metric(m, "kiln_requests_total{model=\"stories\",status=\"cancelled\"}"), 1) << m;
  EXPECT_EQ(testing::metric(m, "kiln_requests_total{model=\"stories\",status=\"success\"}"), 0);
  EXPECT_LT(testing::metric(m, "kiln_generation_tokens_total"), 2000)
      << "aborted long before the end, after " << seconds << " s";
}

TEST_F(ServerEndToEnd, ClientDisconnectDuringNonStreamingRequestAbortsIt) {
  TestServer server(*engine_, ServerOptions{});
  auto client = server.client();
  client->set_read_timeout(0, 200000);  // gives up (closes the connection) after 0.2 s
  auto res =
      client->Post("/v1/completions", json({{"prompt", "Once"}, {"ignore_eos", true}, {"n", 4}}).dump(),
                   "application/json");
  EXPECT_FALSE(res);
  EXPECT_TRUE(testing::wait_until_idle(server));
  const std::string m = testing::scrape(server);
  EXPECT_EQ(testing::metric(m, "kiln_requests_total{model=\"stories\",status=\"cancelled\"}"), 1) << m;
}

TEST_F(ServerEndToEnd, QueueFullGets503WithRetryAfter) {
  WorkerOptions worker;
  worker.max_queue = 2;
  TestServer server(*engine_, ServerOptions{}, worker);
  // Two long streaming requests hold the queue; their clients drop them once a third was refused.
  std::atomic<bool> refused{false};
  std::atomic<int> streaming{0};
  std::vector<std::thread> holders;
  for (int i = 0; i < 2; ++i) {
    holders.emplace_back([&] {
      httplib::Request req;
      req.method = "POST";
      req.path = "/v1/completions";
      req.body = json({{"prompt", "Once"}, {"ignore_eos", true}, {"stream", true}}).dump();
      bool counted = false;
      req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) {
        if (!counted) ++streaming;
        counted = true;
        return !refused.load();
      };
      server.client()->send(req);
    });
  }
  while (streaming.load() < 2) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  auto res =
      server.client()->Post("/v1/completions", R"({"prompt": "Once", "max_tokens": 2})", "application/json");
  refused = true;
  for (std::thread& t : holders) t.join();
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 503);
  EXPECT_EQ(res->get_header_value("Retry-After"), "1");
  EXPECT_EQ(json::parse(res->body)["error"]["code"], "server_overloaded");
  EXPECT_TRUE(testing::wait_until_idle(server));
  // Room again: the next request is served.
  res =
      server.client()->Post("/v1/completions", R"({"prompt": "Once", "max_tokens": 2})", "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
}

TEST_F(ServerEndToEnd, HttpErrorsInOpenAIShape) {
  ServerOptions options;
  options.api_key = "secret";
  options.max_body_bytes = 16384;
  TestServer server(*engine_, options);
  auto keyed = server.client("secret");
  auto anonymous = server.client();
  auto wrong = server.client("nope");
  auto expect_error = [](const httplib::Result& res, int status, const std::string& code,
                         const std::string& param) {
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, status) << res->body;
    EXPECT_EQ(res->get_header_value("Content-Type"), "application/json");
    const json e = json::parse(res->body).at("error");
    EXPECT_TRUE(e.at("message").is_string() && !e["message"].get<std::string>().empty());
    EXPECT_TRUE(e.at("type").is_string());
    EXPECT_EQ(e.at("code"), code.empty() ? json() : json(code)) << res->body;
    EXPECT_EQ(e.at("param"), param.empty() ? json() : json(param)) << res->body;
  };
  const std::string ok_body = R"({"prompt": "Once", "max_tokens": 2})";
  expect_error(anonymous->Post("/v1/completions", ok_body, "application/json"), 401, "invalid_api_key", "");
  expect_error(wrong->Post("/v1/completions", ok_body, "application/json"), 401, "invalid_api_key", "");
  expect_error(wrong->Get("/v1/models"), 401, "invalid_api_key", "");
  auto health = anonymous->Get("/health");  // open without a key, as /metrics
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  EXPECT_EQ(json::parse(health->body), json({{"status", "ok"}}));
  ASSERT_TRUE(anonymous->Get("/metrics"));
  EXPECT_EQ(anonymous->Get("/metrics")->status, 200);

  expect_error(keyed->Post("/v1/completions", "{\"prompt\": ", "application/json"), 400, "invalid_json", "");
  expect_error(keyed->Post("/v1/completions", "[1, 2]", "application/json"), 400, "", "");
  expect_error(keyed->Post("/v1/completions", std::string(20000, ' ') + ok_body, "application/json"), 413,
               "request_too_large", "");
  expect_error(keyed->Post("/v1/completions", R"({"prompt": "Once", "model": "gpt-4"})", "application/json"),
               404, "model_not_found", "model");
  expect_error(
      keyed->Post("/v1/completions", R"({"prompt": "Once", "max_tokens": 5000})", "application/json"), 400,
      "context_length_exceeded", "max_tokens");
  expect_error(keyed->Post("/v1/completions", R"({"prompt": [1, 99999]})", "application/json"), 400, "",
               "prompt");
  expect_error(
      keyed->Post("/v1/completions", R"({"prompt": "x", "logit_bias": {"600": 1}})", "application/json"), 400,
      "", "logit_bias");
  expect_error(keyed->Post("/v1/chat/completions", R"({"messages": [{"role": "user", "content": "hi"}]})",
                           "application/json"),
               400, "no_chat_template", "messages");
  expect_error(keyed->Get("/v1/nothing"), 404, "", "");
  expect_error(keyed->Get("/v1/completions"), 405, "method_not_allowed", "");
  expect_error(keyed->Delete("/v1/models"), 405, "method_not_allowed", "");

  // max_tokens omitted: the rest of the context (2048 positions), not an error.
  std::vector<int32_t> long_prompt(2040, 20);
  long_prompt[0] = 1;
  auto res =
      keyed->Post("/v1/completions",
                  json({{"prompt", long_prompt}, {"max_tokens", nullptr}, {"ignore_eos", true}}).dump(),
                  "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(json::parse(res->body)["usage"]["completion_tokens"], 8);
  EXPECT_EQ(json::parse(res->body)["choices"][0]["finish_reason"], "length");
  const json models = json::parse(keyed->Get("/v1/models")->body);
  EXPECT_EQ(models["object"], "list");
  ASSERT_EQ(models["data"].size(), 1u);
  EXPECT_EQ(models["data"][0]["id"], "stories");
  EXPECT_EQ(models["data"][0]["object"], "model");
}

TEST_F(ServerEndToEnd, SlowClientsAreDroppedAndDoNotBlockOthers) {
  ServerOptions options;
  options.read_timeout_seconds = 1;
  options.keep_alive_timeout_seconds = 1;  // after its error reply the connection waits this long
  options.http_threads = 2;
  TestServer server(*engine_, options);
  // Slowloris: half a request, then silence. The server closes the connection after the read
  // timeout, and meanwhile the other pool thread serves a normal client.
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(server.port()));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  const std::string partial = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n";
  ASSERT_EQ(::send(fd, partial.data(), partial.size(), 0), static_cast<ssize_t>(partial.size()));
  const auto start = std::chrono::steady_clock::now();
  auto res =
      server.client()->Post("/v1/completions", R"({"prompt": "Once", "max_tokens": 3})", "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  char buffer[512];
  timeval wait{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof(wait));
  ssize_t got = 0;
  do {  // whatever the server answers, it then closes: recv returns 0 (-1 would be our 10 s timeout)
    got = ::recv(fd, buffer, sizeof(buffer), 0);
  } while (got > 0);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ::close(fd);
  EXPECT_EQ(got, 0) << "the server should have closed the stalled connection";
  EXPECT_LT(seconds, 5.0);
}

// A connection to the server on 127.0.0.1 (-1 on failure), with a 10 s receive timeout.
int connect_to(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval wait{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof(wait));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// Sends `request` whole, then returns all the server sends until it closes.
std::string exchange(int port, const std::string& request) {
  const int fd = connect_to(port);
  EXPECT_GE(fd, 0);
  if (fd < 0) return "";
  EXPECT_EQ(::send(fd, request.data(), request.size(), MSG_NOSIGNAL), static_cast<ssize_t>(request.size()));
  std::string answer;
  char buffer[4096];
  for (ssize_t n; (n = ::recv(fd, buffer, sizeof(buffer), 0)) > 0;)
    answer.append(buffer, static_cast<size_t>(n));
  ::close(fd);
  return answer;
}

// Sends `prefix` at once, then `trickle` a byte every 100 ms; returns the seconds until the server
// closed the connection (-1: it had not after 10 s) and what it answered.
std::pair<double, std::string> trickle(int port, const std::string& prefix, const std::string& trickle) {
  const int fd = connect_to(port);
  EXPECT_GE(fd, 0);
  if (fd < 0) return {-1, ""};
  const auto start = std::chrono::steady_clock::now();
  auto seconds = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  ::send(fd, prefix.data(), prefix.size(), MSG_NOSIGNAL);
  std::string answer;
  for (size_t i = 0; seconds() < 10; ++i) {
    if (i < trickle.size() && ::send(fd, &trickle[i], 1, MSG_NOSIGNAL) != 1) break;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 100) > 0) {
      char buffer[4096];
      const ssize_t n = ::recv(fd, buffer, sizeof(buffer), 0);
      if (n <= 0) {
        ::close(fd);
        return {seconds(), answer};
      }
      answer.append(buffer, static_cast<size_t>(n));
    }
  }
  ::close(fd);
  return {-1, answer};
}

TEST_F(ServerEndToEnd, TrickledHeadsAndBodiesAreCutAtTheirDeadlines) {
  ServerOptions options;
  options.read_timeout_seconds = 2;  // more than the trickle's 100 ms gaps: the deadlines must cut it
  options.head_timeout_seconds = 1;
  options.min_body_bytes_per_second = 1024;
  options.http_threads = 4;
  TestServer server(*engine_, options);
  // A head a byte every 100 ms: cut at its 1 s deadline (without an answer: the request line is unread).
  const std::string head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Padding: " + std::string(200, 'x');
  auto [head_seconds, head_answer] = trickle(server.port(), "", head);
  EXPECT_GT(head_seconds, 0.9);
  EXPECT_LT(head_seconds, 2.5);
  // A body at 10 bytes/s: cut after the 2 s grace, as 10 bytes/s is under the minimum rate; 408.
  const std::string body = R"({"prompt": "Once", "max_tokens": 2, "user": ")" + std::string(100, 'x') + "\"}";
  auto [body_seconds, body_answer] = trickle(
      server.port(),
      fmt::format("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.size()),
      body);
  EXPECT_GT(body_seconds, 1.9);
  EXPECT_LT(body_seconds, 3.5);
  EXPECT_EQ(body_answer.rfind("HTTP/1.1 408 ", 0), 0u) << body_answer;
  EXPECT_NE(body_answer.find(R"("code":"request_timeout")"), std::string::npos) << body_answer;
  // The same body at once is served.
  auto res = server.client()->Post("/v1/completions", body, "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200) << res->body;
}

TEST_F(ServerEndToEnd, FramingHttplibWouldAcceptIsRefused) {
  ServerOptions options;
  options.max_body_bytes = 1000;
  TestServer server(*engine_, options);
  const std::string ok = R"({"prompt": "Once", "max_tokens": 2})";
  auto status_of = [&](const std::string& request) {
    const std::string answer = exchange(server.port(), request);
    return answer.size() > 12 && answer.rfind("HTTP/1.1 ", 0) == 0 ? std::stoi(answer.substr(9, 3)) : -1;
  };
  const std::string post = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n";
  // Sanity: the well-framed request is served, chunked too.
  EXPECT_EQ(status_of(post + fmt::format("Content-Length: {}\r\n\r\n", ok.size()) + ok), 200);
  EXPECT_EQ(status_of(post + fmt::format("Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{}\r\n0\r\n\r\n",
                                         ok.size(), ok)),
            200);
  // Two lengths (httplib took the first), both framings, a length that is not a number.
  EXPECT_EQ(status_of(post + fmt::format("Content-Length: {}\r\nContent-Length: 5\r\n\r\n", ok.size()) + ok),
            400);
  EXPECT_EQ(status_of(post + "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"), 400);
  EXPECT_EQ(status_of(post + "Content-Length: -5\r\n\r\n"), 400);
  // No length (httplib read to the end of the connection), a compressed body (httplib inflated it
  // without a bound), a body over the limit sent chunked (httplib had no limit for those).
  EXPECT_EQ(status_of(post + "\r\n" + ok), 411);
  EXPECT_EQ(status_of(post + "Content-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabc"), 415);
  const std::string big = R"({"prompt": "Once", "user": ")" + std::string(1500, 'x') + "\"}";
  EXPECT_EQ(status_of(post + fmt::format("Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{}\r\n0\r\n\r\n",
                                         big.size(), big)),
            413);
  EXPECT_EQ(status_of(post + fmt::format("Content-Length: {}\r\n\r\n", big.size()) + big), 413);
  // Heads: over 64 KiB (431), a header line that is not `name: value` (400).
  std::string headers;
  for (int i = 0; i < 70; ++i) headers += fmt::format("X-H{}: {}\r\n", i, std::string(1000, 'v'));
  EXPECT_EQ(status_of("GET /health HTTP/1.1\r\nConnection: close\r\n" + headers + "\r\n"), 431);
  EXPECT_EQ(status_of("GET /health HTTP/1.1\r\nConnection: close\r\nBad header\r\n\r\n"), 400);
  // Nesting deeper than 64 levels (nlohmann builds them all before failing), a number too large.
  const std::string deep_small = R"({"prompt": )" + std::string(100, '[') + std::string(100, ']') + "}";
  EXPECT_EQ(status_of(post + fmt::format("Content-Length: {}\r\n\r\n", deep_small.size()) + deep_small), 400);
  const std::string overflow = R"({"prompt": "Once", "max_tokens": 1e400})";
  EXPECT_EQ(status_of(post + fmt::format("Content-Length: {}\r\n\r\n", overflow.size()) + overflow), 400);
}

TEST_F(ServerEndToEnd, ShutdownLetsRunningRequestsFinishThenAbortsTheRest) {
  TestServer server(*engine_, ServerOptions{});
  // One short request finishes within the grace period; one that runs to the end of the context
  // cannot and is aborted: its stream ends with an error event and [DONE].
  json short_result, long_events;
  std::atomic<bool> short_done{false};
  // The long request first: it runs until the shutdown. The short one may finish before the stop
  // (it takes milliseconds): waiting for both to be active could wait forever.
  std::thread long_client([&] {
    long_events = post(*server.client(), "/v1/completions",
                       {{"prompt", "Once"}, {"ignore_eos", true}, {"stream", true}, {"temperature", 0}});
  });
  while (server.worker().active_requests() < 1) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  std::thread short_client([&] {
    short_result = post(*server.client(), "/v1/completions",
                        {{"prompt", "Once"}, {"max_tokens", 20}, {"ignore_eos", true}});
    short_done = true;
  });
  while (server.worker().active_requests() < 2 && !short_done.load())
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  // The grace period must be shorter than the rest of the long request (2048 positions of stories260K
  // take ~400 ms on one thread of a 2-core EPYC with the tiled attention) and longer than the short
  // one (20 tokens: a few ms, tens under a sanitizer).
  server.stop(std::chrono::milliseconds(150));
  short_client.join();
  long_client.join();
  EXPECT_EQ(short_result["usage"]["completion_tokens"], 20);
  ASSERT_GE(long_events.size(), 2u);
  EXPECT_EQ(long_events.back(), "[DONE]");
  EXPECT_EQ(long_events[long_events.size() - 2]["error"]["message"], "the server is shutting down");
  EXPECT_EQ(server.worker().active_requests(), 0);
}

}  // namespace
}  // namespace kiln
