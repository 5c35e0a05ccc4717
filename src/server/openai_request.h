// The body of POST /v1/completions and /v1/chat/completions, parsed and validated: every field the
// server honours is checked for type and range here, before anything reaches a model, and a wrong
// one is a 400 naming the parameter (OpenAI's error shape). Unknown fields are ignored, as OpenAI's
// own server ignores them. Parsing needs no model; fit_to_context() then checks the prompt against
// the model's context.
//
// Reference: https://platform.openai.com/docs/api-reference/completions and .../chat.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "server/api_error.h"
#include "tokenizer/chat_template.h"

namespace kiln {

enum class Endpoint { Completions, ChatCompletions };

// One prompt as the client sent it: text to tokenize, or token ids used verbatim.
struct PromptInput {
  bool is_ids = false;
  std::string text;
  std::vector<int32_t> ids;
};

struct CompletionRequest {
  Endpoint endpoint = Endpoint::Completions;
  std::string model;                  // empty: the server's only model
  std::vector<PromptInput> prompts;   // completions: one or more (a choice set each)
  std::vector<ChatMessage> messages;  // chat
  std::optional<int32_t> max_tokens;  // none: the rest of the context
  float temperature = 1.0f;           // 0: greedy
  float top_p = 1.0f;
  int32_t top_k = 0;  // 0 (or -1): off
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;  // extension (vLLM's): CTRL-style, over prompt and output
  std::optional<uint64_t> seed;
  float presence_penalty = 0.0f;   // OpenAI: logit -= presence_penalty if the token was output
  float frequency_penalty = 0.0f;  //         logit -= frequency_penalty * times it was output
  std::vector<std::pair<int32_t, float>> logit_bias;  // token id -> bias in [-100, 100]
  std::vector<std::string> stop;                      // at most 4
  int32_t n = 1;
  int32_t logprobs = -1;  // -1: none; else alternatives per token (completions 0..5, chat 0..20)
  bool echo = false;      // completions: the prompt text precedes the completion
  bool stream = false;
  bool include_usage = false;               // stream_options.include_usage
  bool ignore_eos = false;                  // extension (vLLM's): keep generating past EOS
  bool return_tokens_as_token_ids = false;  // extension (vLLM's): logprob tokens as "token_id:ID"
};

// Parses a request body (already valid JSON). Errors: 400 with the offending param.
ApiResult<CompletionRequest> parse_completion_request(const nlohmann::json& body, Endpoint endpoint);

// Checks one tokenized prompt against the model: token ids in the vocabulary, and prompt + max_tokens
// within the context (400 "context_length_exceeded" when max_tokens was given and does not fit; when
// it was not, the rest of the context) and within the KV cache. Returns the max_tokens to use.
struct ModelLimits {
  int64_t vocab_size = 0;
  int64_t max_seq_len = 0;
  int64_t kv_capacity_tokens = 0;  // KV blocks * block size: the most one sequence can ever hold
};
ApiResult<int32_t> fit_to_context(const std::vector<int32_t>& prompt_ids, std::optional<int32_t> max_tokens,
                                  const ModelLimits& limits, const std::string& prompt_param);

}  // namespace kiln
