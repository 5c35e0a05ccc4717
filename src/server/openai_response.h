// Response bodies of the OpenAI API, exactly in its shapes: text_completion and chat.completion
// objects, their streaming chunks (text_completion / chat.completion.chunk) framed as Server-Sent
// Events, usage, and both logprobs formats (legacy completions: parallel arrays; chat: a list of
// {token, logprob, bytes, top_logprobs}). Pure functions: tested without a server.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "server/api_error.h"
#include "server/openai_request.h"
#include "server/request_stream.h"

namespace kiln {

struct ResponseMeta {
  Endpoint endpoint = Endpoint::Completions;
  std::string id;       // "cmpl-..." / "chatcmpl-..."
  int64_t created = 0;  // Unix seconds
  std::string model;
};

// A finished choice of a non-streaming response.
struct ChoiceOutput {
  std::string text;
  bool with_logprobs = false;
  std::vector<TokenLogprob> logprobs;
  std::string finish_reason;
  int64_t completion_tokens = 0;
};

nlohmann::ordered_json usage_json(int64_t prompt_tokens, int64_t completion_tokens);

// Completions' logprobs for `tokens`, whose text starts at byte `text_offset` of the choice's text
// (advanced past them). The sampled token is added to its top_logprobs when not among them, as the
// legacy API returns up to logprobs + 1 entries.
nlohmann::ordered_json completion_logprobs_json(const std::vector<TokenLogprob>& tokens,
                                                int64_t& text_offset);
// Chat's logprobs: {"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}.
nlohmann::ordered_json chat_logprobs_json(const std::vector<TokenLogprob>& tokens);

// The whole non-streaming response; choices are in index order.
nlohmann::ordered_json response_json(const ResponseMeta& meta, const std::vector<ChoiceOutput>& choices,
                                     int64_t prompt_tokens);

// One streaming chunk for choice `index`: a text delta (chat: delta.content; with `role`, the first
// chunk's delta.role), its logprobs when given, and the finish reason in the last one. With
// include_usage every chunk carries "usage": null, as OpenAI's do.
struct ChunkContent {
  int index = 0;
  std::string_view text;
  bool role = false;
  const std::vector<TokenLogprob>* logprobs = nullptr;  // nullptr: "logprobs": null
  int64_t* text_offset = nullptr;                       // completions with logprobs
  const std::string* finish_reason = nullptr;           // nullptr: null
};
nlohmann::ordered_json chunk_json(const ResponseMeta& meta, const ChunkContent& content, bool include_usage);
// The usage chunk sent before [DONE] with stream_options.include_usage: empty choices.
nlohmann::ordered_json usage_chunk_json(const ResponseMeta& meta, int64_t prompt_tokens,
                                        int64_t completion_tokens);

// Serializes for the wire: invalid UTF-8 (a token that is part of a character) becomes U+FFFD.
std::string dump_json(const nlohmann::ordered_json& value);
// "data: <json>\n\n"
std::string sse_event(const nlohmann::ordered_json& value);
inline constexpr std::string_view kSseDone = "data: [DONE]\n\n";

}  // namespace kiln
