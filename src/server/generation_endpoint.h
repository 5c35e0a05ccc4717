// POST /v1/completions and /v1/chat/completions (internal to server/): body -> validated request ->
// token ids (the chat template for chat) -> one SequenceSpec per choice -> EngineWorker::submit ->
// the response, written from the worker's RequestStream as Server-Sent Events or one JSON body.
#pragma once

#include <httplib.h>

#include <optional>
#include <string>
#include <vector>

#include "server/api_error.h"
#include "server/engine_worker.h"
#include "server/model_registry.h"
#include "server/openai_request.h"

namespace kiln {

void send_api_error(httplib::Response& res, const ApiError& error);

void handle_generation(ModelRegistry& registry, Endpoint endpoint, const httplib::Request& req,
                       httplib::Response& res);

// The prompt text of a chat request: the model's template rendered with the generation prompt, and
// whether BOS must still be added when tokenizing it (not when the text already starts with it).
struct ChatPrompt {
  std::string text;
  bool add_bos = true;
};
ApiResult<ChatPrompt> render_chat_prompt(const ChatTemplate* chat_template, const Tokenizer& tokenizer,
                                         const std::vector<ChatMessage>& messages);

// The choices of a request, prompt by prompt and n per prompt (choice index = prompt * n + i); with a
// seed, sample i of each prompt uses seed + i.
struct TokenizedPrompt {
  std::vector<int32_t> ids;
  std::string text;  // for echo
};
std::vector<SequenceSpec> make_sequence_specs(const CompletionRequest& request,
                                              const std::vector<TokenizedPrompt>& prompts,
                                              const std::vector<int32_t>& max_tokens);

}  // namespace kiln
