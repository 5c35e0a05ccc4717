#include "server/openai_response.h"

namespace kiln {

using json = nlohmann::ordered_json;

json usage_json(int64_t prompt_tokens, int64_t completion_tokens) {
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens}};
}

json completion_logprobs_json(const std::vector<TokenLogprob>& tokens, int64_t& text_offset) {
  json out = {{"tokens", json::array()},
              {"token_logprobs", json::array()},
              {"top_logprobs", json::array()},
              {"text_offset", json::array()}};
  for (const TokenLogprob& t : tokens) {
    out["tokens"].push_back(t.token);
    out["token_logprobs"].push_back(t.logprob);
    json top = json::object();
    for (const auto& [token, logprob] : t.top) {
      if (!top.contains(token)) top[token] = logprob;
    }
    if (!top.contains(t.token)) top[t.token] = t.logprob;
    out["top_logprobs"].push_back(std::move(top));
    out["text_offset"].push_back(text_offset);
    text_offset += static_cast<int64_t>(t.token.size());
  }
  return out;
}

namespace {
json bytes_of(const std::string& s) {
  json bytes = json::array();
  for (unsigned char c : s) bytes.push_back(static_cast<int>(c));
  return bytes;
}
}  // namespace

json chat_logprobs_json(const std::vector<TokenLogprob>& tokens) {
  json content = json::array();
  for (const TokenLogprob& t : tokens) {
    json top = json::array();
    for (const auto& [token, logprob] : t.top) {
      top.push_back({{"token", token}, {"logprob", logprob}, {"bytes", bytes_of(token)}});
    }
    content.push_back(
        {{"token", t.token}, {"logprob", t.logprob}, {"bytes", bytes_of(t.token)}, {"top_logprobs", top}});
  }
  return {{"content", std::move(content)}, {"refusal", nullptr}};
}

json response_json(const ResponseMeta& meta, const std::vector<ChoiceOutput>& choices,
                   int64_t prompt_tokens) {
  const bool chat = meta.endpoint == Endpoint::ChatCompletions;
  json out_choices = json::array();
  int64_t completion_tokens = 0;
  for (size_t i = 0; i < choices.size(); ++i) {
    const ChoiceOutput& c = choices[i];
    completion_tokens += c.completion_tokens;
    json choice = {{"index", i}};
    if (chat) {
      choice["message"] = {{"role", "assistant"}, {"content", c.text}, {"refusal", nullptr}};
      choice["logprobs"] = c.with_logprobs ? chat_logprobs_json(c.logprobs) : json();
    } else {
      choice["text"] = c.text;
      int64_t offset = 0;
      choice["logprobs"] = c.with_logprobs ? completion_logprobs_json(c.logprobs, offset) : json();
    }
    choice["finish_reason"] = c.finish_reason;
    out_choices.push_back(std::move(choice));
  }
  return {{"id", meta.id},
          {"object", chat ? "chat.completion" : "text_completion"},
          {"created", meta.created},
          {"model", meta.model},
          {"system_fingerprint", nullptr},
          {"choices", std::move(out_choices)},
          {"usage", usage_json(prompt_tokens, completion_tokens)}};
}

json chunk_json(const ResponseMeta& meta, const ChunkContent& content, bool include_usage) {
  const bool chat = meta.endpoint == Endpoint::ChatCompletions;
  json choice = {{"index", content.index}};
  if (chat) {
    json delta = json::object();
    if (content.role) delta["role"] = "assistant";
    if (!content.text.empty() || content.role) delta["content"] = content.text;
    choice["delta"] = std::move(delta);
    choice["logprobs"] = content.logprobs ? chat_logprobs_json(*content.logprobs) : json();
  } else {
    choice["text"] = content.text;
    int64_t unused = 0;
    choice["logprobs"] =
        content.logprobs
            ? completion_logprobs_json(*content.logprobs, content.text_offset ? *content.text_offset : unused)
            : json();
  }
  choice["finish_reason"] = content.finish_reason ? json(*content.finish_reason) : json();
  json out = {{"id", meta.id},
              {"object", chat ? "chat.completion.chunk" : "text_completion"},
              {"created", meta.created},
              {"model", meta.model},
              {"system_fingerprint", nullptr},
              {"choices", json::array({std::move(choice)})}};
  if (include_usage) out["usage"] = nullptr;
  return out;
}

json usage_chunk_json(const ResponseMeta& meta, int64_t prompt_tokens, int64_t completion_tokens) {
  const bool chat = meta.endpoint == Endpoint::ChatCompletions;
  return {{"id", meta.id},
          {"object", chat ? "chat.completion.chunk" : "text_completion"},
          {"created", meta.created},
          {"model", meta.model},
          {"system_fingerprint", nullptr},
          {"choices", json::array()},
          {"usage", usage_json(prompt_tokens, completion_tokens)}};
}

std::string dump_json(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string sse_event(const json& value) { return "data: " + dump_json(value) + "\n\n"; }

}  // namespace kiln
