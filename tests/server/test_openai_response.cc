// Response shapes against the OpenAI API reference (completions, chat completions, their streaming
// chunks and logprobs objects), SSE framing, and the Prometheus text of /metrics.
#include <gtest/gtest.h>

#include <sstream>

#include "server/metrics.h"
#include "server/openai_response.h"

namespace kiln {
namespace {

using nlohmann::json;

json reparse(const nlohmann::ordered_json& j) { return json::parse(dump_json(j)); }

TEST(OpenAIResponse, ServerSentEventFraming) {
  EXPECT_EQ(sse_event(nlohmann::ordered_json{{"a", 1}, {"b", "x"}}), "data: {\"a\":1,\"b\":\"x\"}\n\n");
  EXPECT_EQ(kSseDone, "data: [DONE]\n\n");
  // A token that is part of a UTF-8 character must not break the JSON: U+FFFD replaces it.
  EXPECT_EQ(dump_json(nlohmann::ordered_json("a\xe2")), "\"a\xef\xbf\xbd\"");
}

TEST(OpenAIResponse, CompletionObject) {
  ResponseMeta meta{Endpoint::Completions, "cmpl-1", 1700000000, "m"};
  std::vector<ChoiceOutput> choices(2);
  choices[0].text = "hello";
  choices[0].finish_reason = "stop";
  choices[0].completion_tokens = 2;
  choices[1].text = "hi there";
  choices[1].finish_reason = "length";
  choices[1].completion_tokens = 3;
  const json r = reparse(response_json(meta, choices, 5));
  const json expected = json::parse(R"({
    "id": "cmpl-1", "object": "text_completion", "created": 1700000000, "model": "m",
    "system_fingerprint": null,
    "choices": [
      {"index": 0, "text": "hello", "logprobs": null, "finish_reason": "stop"},
      {"index": 1, "text": "hi there", "logprobs": null, "finish_reason": "length"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}})");
  EXPECT_EQ(r, expected) << r.dump(2);
}

TEST(OpenAIResponse, ChatCompletionObject) {
  ResponseMeta meta{Endpoint::ChatCompletions, "chatcmpl-1", 7, "m"};
  std::vector<ChoiceOutput> choices(1);
  choices[0].text = "Hi!";
  choices[0].finish_reason = "stop";
  choices[0].completion_tokens = 2;
  const json r = reparse(response_json(meta, choices, 4));
  const json expected = json::parse(R"({
    "id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "m", "system_fingerprint": null,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi!", "refusal": null},
                 "logprobs": null, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}})");
  EXPECT_EQ(r, expected) << r.dump(2);
}

TEST(OpenAIResponse, StreamingChunks) {
  ResponseMeta chat{Endpoint::ChatCompletions, "chatcmpl-2", 9, "m"};
  ChunkContent first;
  first.role = true;
  json c = reparse(chunk_json(chat, first, false));
  EXPECT_EQ(c,
            json::parse(R"({"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 9, "model": "m",
    "system_fingerprint": null, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
    "logprobs": null, "finish_reason": null}]})"));
  ChunkContent delta;
  delta.index = 1;
  delta.text = "Hel";
  c = reparse(chunk_json(chat, delta, true));
  EXPECT_EQ(c["choices"][0]["delta"], json({{"content", "Hel"}}));
  EXPECT_EQ(c["choices"][0]["index"], 1);
  EXPECT_TRUE(c.contains("usage") && c["usage"].is_null()) << "include_usage: every chunk has usage: null";
  const std::string stop = "stop";
  ChunkContent last;
  last.finish_reason = &stop;
  c = reparse(chunk_json(chat, last, false));
  EXPECT_EQ(c["choices"][0]["delta"], json::object()) << "the last chunk's delta is empty";
  EXPECT_EQ(c["choices"][0]["finish_reason"], "stop");
  EXPECT_FALSE(c.contains("usage"));

  ResponseMeta text{Endpoint::Completions, "cmpl-2", 9, "m"};
  c = reparse(chunk_json(text, delta, false));
  EXPECT_EQ(c, json::parse(R"({"id": "cmpl-2", "object": "text_completion", "created": 9, "model": "m",
    "system_fingerprint": null, "choices": [{"index": 1, "text": "Hel", "logprobs": null, "finish_reason": null}]})"));
  c = reparse(usage_chunk_json(text, 3, 4));
  EXPECT_EQ(c["choices"], json::array());
  EXPECT_EQ(c["usage"], json({{"prompt_tokens", 3}, {"completion_tokens", 4}, {"total_tokens", 7}}));
}

TEST(OpenAIResponse, CompletionLogprobs) {
  std::vector<TokenLogprob> tokens(2);
  tokens[0] = {" the", -0.5f, {{" the", -0.5f}, {" a", -1.25f}}};
  tokens[1] = {" cat", -3.0f, {{" dog", -1.0f}, {" cow", -2.0f}}};  // sampled outside the top 2
  int64_t offset = 10;
  const json r = reparse(completion_logprobs_json(tokens, offset));
  EXPECT_EQ(r["tokens"], json({" the", " cat"}));
  EXPECT_EQ(r["token_logprobs"], json({-0.5, -3.0}));
  EXPECT_EQ(r["top_logprobs"][0], json({{" the", -0.5}, {" a", -1.25}}));
  EXPECT_EQ(r["top_logprobs"][1], json({{" dog", -1.0}, {" cow", -2.0}, {" cat", -3.0}}))
      << "the sampled token joins its top_logprobs (up to logprobs + 1 entries)";
  EXPECT_EQ(r["text_offset"], json({10, 14}));
  EXPECT_EQ(offset, 18);
}

TEST(OpenAIResponse, ChatLogprobs) {
  std::vector<TokenLogprob> tokens(1);
  tokens[0] = {"\xc3\xa9t\xc3\xa9", -0.25f, {{"\xc3\xa9t\xc3\xa9", -0.25f}, {"\xe2", -2.0f}}};
  const json r = reparse(chat_logprobs_json(tokens));
  const json expected =
      json::parse(R"({"content": [{"token": "été", "logprob": -0.25, "bytes": [195, 169, 116, 195, 169],
    "top_logprobs": [{"token": "été", "logprob": -0.25, "bytes": [195, 169, 116, 195, 169]},
                     {"token": "\ufffd", "logprob": -2.0, "bytes": [226]}]}], "refusal": null})");
  EXPECT_EQ(r, expected) << r.dump(2);
}

// An independent reading of the Prometheus text format (exposition format 0.0.4): comment lines,
// then samples "name{labels} value"; every sample belongs to the family announced before it.
TEST(Metrics, PrometheusTextExposition) {
  ModelMetrics a, b;
  a.count(RequestOutcome::Success);
  a.count(RequestOutcome::Success);
  a.count(RequestOutcome::Cancelled);
  a.prompt_tokens = 12;
  a.time_to_first_token.observe(0.003);
  a.time_to_first_token.observe(0.2);
  a.time_to_first_token.observe(500);
  a.kv_blocks_total = 10;
  a.kv_blocks_free = 7;
  a.prefix_cache_query_tokens = 40;
  a.prefix_cache_hit_tokens = 10;
  const std::string text = render_prometheus({{"a", &a}, {"we\"ird\\name", &b}});

  std::istringstream in(text);
  std::string line, family, type;
  std::map<std::string, std::string> types;
  std::map<std::string, double> samples;
  while (std::getline(in, line)) {
    ASSERT_FALSE(line.empty());
    if (line.rfind("# HELP ", 0) == 0) {
      family = line.substr(7, line.find(' ', 7) - 7);
      continue;
    }
    if (line.rfind("# TYPE ", 0) == 0) {
      std::istringstream t(line.substr(7));
      std::string name;
      t >> name >> type;
      EXPECT_EQ(name, family) << "TYPE follows its HELP";
      EXPECT_TRUE(type == "counter" || type == "gauge" || type == "histogram") << line;
      EXPECT_FALSE(types.count(name)) << name << " announced twice";
      types[name] = type;
      continue;
    }
    const size_t brace = line.find('{');
    ASSERT_NE(brace, std::string::npos) << "every sample is labelled by model: " << line;
    const std::string name = line.substr(0, brace);
    if (type == "histogram") {
      EXPECT_TRUE(name == family + "_bucket" || name == family + "_sum" || name == family + "_count") << line;
    } else {
      EXPECT_EQ(name, family) << line;
    }
    const size_t close = line.rfind("} ");
    ASSERT_NE(close, std::string::npos) << line;
    samples[line.substr(0, close + 1)] = std::stod(line.substr(close + 2));
  }
  EXPECT_EQ(samples.at("kiln_requests_total{model=\"a\",status=\"success\"}"), 2);
  EXPECT_EQ(samples.at("kiln_requests_total{model=\"a\",status=\"cancelled\"}"), 1);
  EXPECT_EQ(samples.at("kiln_prompt_tokens_total{model=\"a\"}"), 12);
  EXPECT_EQ(samples.at("kiln_time_to_first_token_seconds_bucket{model=\"a\",le=\"0.001\"}"), 0);
  EXPECT_EQ(samples.at("kiln_time_to_first_token_seconds_bucket{model=\"a\",le=\"0.005\"}"), 1);
  EXPECT_EQ(samples.at("kiln_time_to_first_token_seconds_bucket{model=\"a\",le=\"0.25\"}"), 2);
  EXPECT_EQ(samples.at("kiln_time_to_first_token_seconds_bucket{model=\"a\",le=\"80\"}"), 2);
  EXPECT_EQ(samples.at("kiln_time_to_first_token_seconds_bucket{model=\"a\",le=\"+Inf\"}"), 3);
  EXPECT_EQ(samples.at("kiln_time_to_first_token_seconds_count{model=\"a\"}"), 3);
  EXPECT_DOUBLE_EQ(samples.at("kiln_time_to_first_token_seconds_sum{model=\"a\"}"), 500.203);
  EXPECT_EQ(samples.at("kiln_kv_blocks_free{model=\"a\"}"), 7);
  EXPECT_EQ(samples.at("kiln_prefix_cache_hit_rate{model=\"a\"}"), 0.25);
  EXPECT_EQ(samples.at("kiln_prefix_cache_hit_rate{model=\"we\\\"ird\\\\name\"}"), 0)
      << "label escaped, no division by 0";
  for (const char* name :
       {"kiln_requests_total", "kiln_prompt_tokens_total", "kiln_generation_tokens_total",
        "kiln_time_to_first_token_seconds", "kiln_inter_token_latency_seconds",
        "kiln_request_duration_seconds", "kiln_queue_length", "kiln_running_sequences", "kiln_kv_blocks_used",
        "kiln_kv_blocks_free", "kiln_kv_blocks_total", "kiln_prefix_cache_query_tokens_total",
        "kiln_prefix_cache_hit_tokens_total", "kiln_prefix_cache_hit_rate", "kiln_preemptions_total"}) {
    EXPECT_TRUE(types.count(name)) << name;
  }
  EXPECT_EQ(types["kiln_time_to_first_token_seconds"], "histogram");
  EXPECT_EQ(types["kiln_queue_length"], "gauge");
  EXPECT_EQ(types["kiln_preemptions_total"], "counter");
}

}  // namespace
}  // namespace kiln
