// Request validation: every accepted form of each field (values from the OpenAI API reference), and
// every rejection with its status and the parameter it names; fit_to_context's context rules.
#include <gtest/gtest.h>

#include "server/openai_request.h"

namespace kiln {
namespace {

using nlohmann::json;

CompletionRequest parse_ok(const json& body, Endpoint endpoint = Endpoint::Completions) {
  ApiResult<CompletionRequest> r = parse_completion_request(body, endpoint);
  EXPECT_TRUE(r.ok()) << body.dump() << " -> " << (r.ok() ? "" : r.error().message);
  return r.ok() ? std::move(r).value() : CompletionRequest{};
}

TEST(OpenAIRequest, CompletionDefaultsAndFields) {
  const CompletionRequest d = parse_ok({{"model", "m"}, {"prompt", "hi"}});
  EXPECT_EQ(d.model, "m");
  ASSERT_EQ(d.prompts.size(), 1u);
  EXPECT_FALSE(d.prompts[0].is_ids);
  EXPECT_EQ(d.prompts[0].text, "hi");
  EXPECT_FALSE(d.max_tokens.has_value());
  EXPECT_EQ(d.temperature, 1.0f);
  EXPECT_EQ(d.top_p, 1.0f);
  EXPECT_EQ(d.n, 1);
  EXPECT_EQ(d.logprobs, -1);
  EXPECT_FALSE(d.seed.has_value());
  EXPECT_FALSE(d.stream);

  const CompletionRequest r = parse_ok({{"prompt", "hi"},
                                        {"max_tokens", 7},
                                        {"temperature", 0},
                                        {"top_p", 0.5},
                                        {"top_k", 40},
                                        {"min_p", 0.1},
                                        {"seed", -3},
                                        {"stop", "\n"},
                                        {"n", 3},
                                        {"logprobs", 2},
                                        {"presence_penalty", -2},
                                        {"frequency_penalty", 1.5},
                                        {"logit_bias", {{"17", -100}, {"4", 2.5}}},
                                        {"echo", false},
                                        {"stream", true},
                                        {"stream_options", {{"include_usage", true}}},
                                        {"user", "someone"},
                                        {"an_unknown_field", {1, 2, 3}}});
  EXPECT_EQ(r.max_tokens, 7);
  EXPECT_EQ(r.temperature, 0.0f);
  EXPECT_EQ(r.top_p, 0.5f);
  EXPECT_EQ(r.top_k, 40);
  EXPECT_FLOAT_EQ(r.min_p, 0.1f);
  EXPECT_EQ(r.seed, static_cast<uint64_t>(-3));
  EXPECT_EQ(r.stop, std::vector<std::string>{"\n"});
  EXPECT_EQ(r.n, 3);
  EXPECT_EQ(r.logprobs, 2);
  EXPECT_EQ(r.presence_penalty, -2.0f);
  EXPECT_EQ(r.frequency_penalty, 1.5f);
  EXPECT_EQ(r.logit_bias.size(), 2u);
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  // null means "not given"; integral floats are integers; top_k -1 is off (vLLM's convention).
  const CompletionRequest n =
      parse_ok({{"prompt", "x"}, {"max_tokens", nullptr}, {"n", 2.0}, {"top_k", -1}, {"stop", nullptr}});
  EXPECT_FALSE(n.max_tokens.has_value());
  EXPECT_EQ(n.n, 2);
  EXPECT_EQ(n.top_k, 0);
  EXPECT_TRUE(n.stop.empty());
}

TEST(OpenAIRequest, PromptForms) {
  const CompletionRequest ids = parse_ok({{"prompt", {1, 2, 3}}});
  ASSERT_EQ(ids.prompts.size(), 1u);
  EXPECT_TRUE(ids.prompts[0].is_ids);
  EXPECT_EQ(ids.prompts[0].ids, (std::vector<int32_t>{1, 2, 3}));
  const CompletionRequest strings = parse_ok({{"prompt", {"a", "b"}}});
  ASSERT_EQ(strings.prompts.size(), 2u);
  EXPECT_EQ(strings.prompts[1].text, "b");
  const CompletionRequest id_lists = parse_ok({{"prompt", {{1, 2}, {3}}}});
  ASSERT_EQ(id_lists.prompts.size(), 2u);
  EXPECT_EQ(id_lists.prompts[1].ids, std::vector<int32_t>{3});
}

TEST(OpenAIRequest, ChatMessages) {
  const CompletionRequest r =
      parse_ok({{"messages",
                 {{{"role", "system"}, {"content", "be brief"}},
                  {{"role", "user"},
                   {"content", {{{"type", "text"}, {"text", "a"}}, {{"type", "text"}, {"text", "b"}}}}},
                  {{"role", "assistant"}, {"content", nullptr}}}},
                {"max_completion_tokens", 9},
                {"max_tokens", 4},
                {"logprobs", true},
                {"top_logprobs", 3}},
               Endpoint::ChatCompletions);
  ASSERT_EQ(r.messages.size(), 3u);
  EXPECT_EQ(r.messages[0].role, "system");
  EXPECT_EQ(r.messages[1].content, "ab");
  EXPECT_EQ(r.messages[2].content, "");
  EXPECT_EQ(r.max_tokens, 9) << "max_completion_tokens wins over the deprecated max_tokens";
  EXPECT_EQ(r.logprobs, 3);
  EXPECT_EQ(parse_ok({{"messages", {{{"role", "user"}, {"content", "x"}}}}, {"logprobs", true}},
                     Endpoint::ChatCompletions)
                .logprobs,
            0);
}

struct Rejection {
  Endpoint endpoint;
  json body;
  std::string param;  // the parameter the error must name
};

TEST(OpenAIRequest, EveryRejectionNamesItsParameter) {
  const json p = "hello";
  const json m = json::array({{{"role", "user"}, {"content", "hi"}}});
  const Endpoint C = Endpoint::Completions, X = Endpoint::ChatCompletions;
  const std::vector<Rejection> cases = {
      {C, json::array({1, 2}), ""},
      {C, json::object(), "prompt"},
      {C, {{"prompt", 5}}, "prompt"},
      {C, {{"prompt", json::array()}}, "prompt"},
      {C, {{"prompt", {1, -2}}}, "prompt"},
      {C, {{"prompt", {1, 2.5}}}, "prompt"},
      {C, {{"prompt", {"a", 3}}}, "prompt"},
      {C, {{"prompt", {json::array()}}}, "prompt"},
      {C, {{"prompt", p}, {"model", 3}}, "model"},
      {C, {{"prompt", p}, {"max_tokens", 0}}, "max_tokens"},
      {C, {{"prompt", p}, {"max_tokens", "10"}}, "max_tokens"},
      {C, {{"prompt", p}, {"max_tokens", 1.5}}, "max_tokens"},
      {C, {{"prompt", p}, {"temperature", -0.1}}, "temperature"},
      {C, {{"prompt", p}, {"temperature", 2.5}}, "temperature"},
      {C, {{"prompt", p}, {"temperature", true}}, "temperature"},
      {C, {{"prompt", p}, {"top_p", 0}}, "top_p"},
      {C, {{"prompt", p}, {"top_p", 1.01}}, "top_p"},
      {C, {{"prompt", p}, {"top_k", -2}}, "top_k"},
      {C, {{"prompt", p}, {"min_p", 1.5}}, "min_p"},
      {C, {{"prompt", p}, {"presence_penalty", 2.1}}, "presence_penalty"},
      {C, {{"prompt", p}, {"frequency_penalty", -3}}, "frequency_penalty"},
      {C, {{"prompt", p}, {"repetition_penalty", 0}}, "repetition_penalty"},
      {C, {{"prompt", p}, {"seed", "7"}}, "seed"},
      {C, {{"prompt", p}, {"n", 0}}, "n"},
      {C, {{"prompt", p}, {"n", 129}}, "n"},
      {C, {{"prompt", p}, {"stop", 3}}, "stop"},
      {C, {{"prompt", p}, {"stop", {"a", "b", "c", "d", "e"}}}, "stop"},
      {C, {{"prompt", p}, {"stop", {"a", 1}}}, "stop"},
      {C, {{"prompt", p}, {"stop", ""}}, "stop"},
      {C, {{"prompt", p}, {"logprobs", 6}}, "logprobs"},
      {C, {{"prompt", p}, {"logprobs", true}}, "logprobs"},
      {C, {{"prompt", p}, {"echo", 1}}, "echo"},
      {C, {{"prompt", p}, {"echo", true}, {"logprobs", 1}}, "echo"},
      {C, {{"prompt", p}, {"stream", "yes"}}, "stream"},
      {C, {{"prompt", p}, {"stream_options", 1}}, "stream_options"},
      {C, {{"prompt", p}, {"stream_options", {{"include_usage", 1}}}}, "stream_options.include_usage"},
      {C, {{"prompt", p}, {"logit_bias", {{"x", 1}}}}, "logit_bias"},
      {C, {{"prompt", p}, {"logit_bias", {{"3", 101}}}}, "logit_bias"},
      {C, {{"prompt", p}, {"logit_bias", {1, 2}}}, "logit_bias"},
      {C, {{"prompt", p}, {"user", 5}}, "user"},
      {X, {{"prompt", p}}, "messages"},
      {X, {{"messages", json::array()}}, "messages"},
      {X, {{"messages", {1}}}, "messages[0]"},
      {X, {{"messages", {{{"content", "hi"}}}}}, "messages[0].role"},
      {X, {{"messages", {{{"role", "wizard"}, {"content", "hi"}}}}}, "messages[0].role"},
      {X, {{"messages", {{{"role", "user"}}}}}, "messages[0].content"},
      {X, {{"messages", {{{"role", "user"}, {"content", 3}}}}}, "messages[0].content"},
      {X,
       {{"messages", {{{"role", "user"}, {"content", {{{"type", "image_url"}, {"image_url", "x"}}}}}}}},
       "messages[0].content[0]"},
      {X, {{"messages", m}, {"max_completion_tokens", 0}}, "max_completion_tokens"},
      {X, {{"messages", m}, {"logprobs", 1}}, "logprobs"},
      {X, {{"messages", m}, {"top_logprobs", 21}, {"logprobs", true}}, "top_logprobs"},
      {X, {{"messages", m}, {"top_logprobs", 2}}, "top_logprobs"},
      // Unimplemented fields that change the answer's meaning: refused, not ignored.
      {X, {{"messages", m}, {"response_format", {{"type", "json_object"}}}}, "response_format"},
      {X, {{"messages", m}, {"response_format", {{"type", "json_schema"}, {"json_schema", {{"name", "x"}}}}}}, "response_format"},
      {C, {{"prompt", p}, {"response_format", {{"type", "json_object"}}}}, "response_format"},
      {X, {{"messages", m}, {"response_format", "json"}}, "response_format"},
      {X, {{"messages", m}, {"tools", {{{"type", "function"}, {"function", {{"name", "f"}}}}}}}, "tools"},
      {X, {{"messages", m}, {"tool_choice", "required"}}, "tool_choice"},
      {X, {{"messages", m}, {"tool_choice", "auto"}}, "tool_choice"},
      {X, {{"messages", m}, {"functions", {{{"name", "f"}}}}}, "functions"},
      {X, {{"messages", m}, {"function_call", "auto"}}, "function_call"},
      {X, {{"messages", m}, {"guided_json", {{"type", "object"}}}}, "guided_json"},
      {C, {{"prompt", p}, {"guided_regex", "a+"}}, "guided_regex"},
      {C, {{"prompt", p}, {"grammar", "root ::= \"a\""}}, "grammar"},
      {X, {{"messages", m}, {"json_schema", {{"type", "object"}}}}, "json_schema"},
      {C, {{"prompt", p}, {"best_of", 3}}, "best_of"},
      {C, {{"prompt", p}, {"suffix", "end"}}, "suffix"},
      {X, {{"messages", m}, {"modalities", {"text", "audio"}}}, "modalities"},
      {X, {{"messages", m}, {"audio", {{"voice", "alloy"}}}}, "audio"},
      {X, {{"messages", m}, {"prediction", {{"type", "content"}, {"content", "x"}}}}, "prediction"},
  };
  for (const Rejection& c : cases) {
    const ApiResult<CompletionRequest> r = parse_completion_request(c.body, c.endpoint);
    ASSERT_FALSE(r.ok()) << c.body.dump() << " was accepted";
    EXPECT_EQ(r.error().status, 400) << c.body.dump();
    EXPECT_EQ(r.error().type, "invalid_request_error");
    EXPECT_EQ(r.error().param, c.param) << c.body.dump() << ": " << r.error().message;
    EXPECT_FALSE(r.error().message.empty());
  }
}

// Their "off" values are the API's defaults and change nothing: accepted.
TEST(OpenAIRequest, UnimplementedFieldsAcceptTheirOffValues) {
  const json m = json::array({{{"role", "user"}, {"content", "hi"}}});
  for (const json& body : {json{{"messages", m}, {"response_format", {{"type", "text"}}}},
                           json{{"messages", m}, {"tools", json::array()}, {"tool_choice", "none"}},
                           json{{"messages", m}, {"response_format", nullptr}, {"tools", nullptr}},
                           json{{"messages", m}, {"modalities", {"text"}}, {"parallel_tool_calls", true}}}) {
    EXPECT_TRUE(parse_completion_request(body, Endpoint::ChatCompletions).ok()) << body.dump();
  }
  EXPECT_TRUE(parse_completion_request(json{{"prompt", "x"}, {"best_of", 1}, {"suffix", ""}}, Endpoint::Completions).ok());
  const auto r = parse_completion_request(json{{"messages", m}, {"response_format", {{"type", "json_object"}}}},
                                          Endpoint::ChatCompletions);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, "unsupported_parameter");
  EXPECT_NE(r.error().message.find("not supported"), std::string::npos) << r.error().message;
}

TEST(OpenAIRequest, FitToContext) {
  const ModelLimits limits{512, 100, 1000};
  const std::vector<int32_t> prompt(30, 5);
  // Omitted max_tokens: the rest of the context.
  ApiResult<int32_t> r = fit_to_context(prompt, std::nullopt, limits, "prompt");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, 70);
  r = fit_to_context(prompt, 70, limits, "prompt");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, 70);
  r = fit_to_context(prompt, 71, limits, "prompt");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, "context_length_exceeded");
  EXPECT_EQ(r.error().param, "max_tokens");
  // A prompt filling the context leaves no room even for one token.
  r = fit_to_context(std::vector<int32_t>(100, 5), std::nullopt, limits, "messages");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, "context_length_exceeded");
  EXPECT_EQ(r.error().param, "messages");
  // The KV cache can be the tighter limit: 40 tokens of KV serve sequences of 41.
  r = fit_to_context(prompt, std::nullopt, ModelLimits{512, 100, 40}, "prompt");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, 11);
  // Token ids outside the vocabulary, and empty prompts.
  r = fit_to_context({1, 512}, 5, limits, "prompt");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().param, "prompt");
  EXPECT_FALSE(fit_to_context({}, 5, limits, "prompt").ok());
}

}  // namespace
}  // namespace kiln
