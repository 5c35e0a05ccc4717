#include "server/generation_endpoint.h"

#include <fmt/format.h>

#include <chrono>
#include <random>
#include <string_view>

#include "server/openai_response.h"

namespace kiln {

namespace {

using Clock = std::chrono::steady_clock;
// How often a response writer with nothing to write checks that its client is still there.
constexpr std::chrono::milliseconds kPollInterval(50);
constexpr int64_t kMaxChoices = 256;  // prompts x n of one request
// nlohmann's parser builds every level of a nested array before it can fail: a 4 MiB body of "[[[[..."
// took ~300 MiB (and glibc kept most of it). The API's requests nest a few levels; deeper ones are
// refused before parsing.
constexpr int kMaxJsonDepth = 64;

bool nested_too_deeply(std::string_view text) {
  int depth = 0;
  bool in_string = false;
  bool escaped = false;
  for (const char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth) return true;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return false;
}

std::string random_id(std::string_view prefix) {
  thread_local std::mt19937_64 rng(std::random_device{}());
  return fmt::format("{}{:016x}{:016x}", prefix, rng(), rng());
}

int64_t unix_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

struct PreparedRequest {
  std::vector<TokenizedPrompt> prompts;
  std::vector<int32_t> max_tokens;  // [prompts]
  int64_t prompt_tokens = 0;
};

ApiResult<PreparedRequest> prepare(const EngineWorker& worker, const CompletionRequest& request) {
  const Tokenizer* tokenizer = worker.tokenizer();
  const bool chat = request.endpoint == Endpoint::ChatCompletions;
  const std::string param = chat ? "messages" : "prompt";
  PreparedRequest out;
  // Each choice is a sequence in the scheduler: bound what one request may ask for (before tokenizing).
  const int64_t num_prompts = chat ? 1 : static_cast<int64_t>(request.prompts.size());
  if (num_prompts * request.n > kMaxChoices) {
    return invalid_param(request.n > 1 ? "n" : "prompt",
                         fmt::format("{} prompts x n = {} choices: at most {} per request", num_prompts,
                                     num_prompts * request.n, kMaxChoices));
  }
  if (chat) {
    if (!tokenizer)
      return invalid_param("messages", "this model has no tokenizer: use /v1/completions with token ids");
    ApiResult<ChatPrompt> prompt = render_chat_prompt(worker.chat_template(), *tokenizer, request.messages);
    if (!prompt.ok()) return prompt.error();
    out.prompts.push_back({tokenizer->encode(prompt->text, prompt->add_bos), prompt->text});
  } else {
    for (const PromptInput& p : request.prompts) {
      if (p.is_ids) {
        out.prompts.push_back({p.ids, tokenizer && request.echo ? tokenizer->decode(p.ids) : std::string()});
      } else {
        if (!tokenizer)
          return invalid_param("prompt", "this model has no tokenizer: send the prompt as token ids");
        out.prompts.push_back({tokenizer->encode(p.text, /*add_bos=*/true), p.text});
      }
    }
  }
  const ModelLimits limits = worker.limits();
  for (const TokenizedPrompt& p : out.prompts) {
    ApiResult<int32_t> max_tokens = fit_to_context(p.ids, request.max_tokens, limits, param);
    if (!max_tokens.ok()) return max_tokens.error();
    out.max_tokens.push_back(*max_tokens);
    out.prompt_tokens += static_cast<int64_t>(p.ids.size());
  }
  for (const auto& [id, bias] : request.logit_bias) {
    if (id >= limits.vocab_size) {
      return invalid_param("logit_bias", fmt::format("token id {} is outside the vocabulary of {} tokens", id,
                                                     limits.vocab_size));
    }
  }
  return out;
}

// Writes a response from the worker's RequestStream; shared by httplib's content provider and its
// releaser, which cancels the request when the response did not complete (client gone).
struct ResponseWriter {
  std::shared_ptr<EngineWorker> worker;
  std::shared_ptr<RequestStream> stream;
  ResponseMeta meta;
  int64_t prompt_tokens = 0;
  bool include_usage = false;
  bool with_logprobs = false;
  std::vector<std::string> echo;  // [choices] text before each completion (completions with echo)
  bool completed = false;

  bool write(httplib::DataSink& sink, const std::string& data) {
    // Never write 0 bytes: httplib takes an empty chunk for the end of the content.
    return data.empty() || sink.write(data.data(), data.size());
  }

  bool abandon() {
    worker->cancel(stream);
    return false;
  }

  bool write_events(httplib::DataSink& sink) {
    const int choices = stream->num_choices();
    const bool chat = meta.endpoint == Endpoint::ChatCompletions;
    std::vector<ChoiceUpdate> updates;
    std::vector<bool> finished(choices, false);
    std::vector<int64_t> text_offsets(choices, 0);
    int64_t completion_tokens = 0;
    std::string out;
    for (int c = 0; c < choices; ++c) {
      // Chat's first chunk of each choice carries the role; echo's carries the prompt.
      ChunkContent first;
      first.index = c;
      first.role = chat;
      if (!echo.empty()) first.text = echo[c];
      if (first.role || !first.text.empty()) out += sse_event(chunk_json(meta, first, include_usage));
    }
    if (!write(sink, out)) return abandon();
    for (int remaining = choices; remaining > 0;) {
      const bool news = stream->wait_and_take(updates, kPollInterval);
      if (!sink.is_writable()) return abandon();
      if (!news) continue;
      out.clear();
      if (const std::optional<std::string> error = stream->error()) {
        out += sse_event(error_json(ApiError{500, *error, "server_error", "", ""}));
        out += kSseDone;
        completed = true;
        write(sink, out);
        sink.done();
        return true;
      }
      for (int c = 0; c < choices; ++c) {
        ChoiceUpdate& u = updates[c];
        if (!u.text.empty() || !u.logprobs.empty()) {
          ChunkContent chunk;
          chunk.index = c;
          chunk.text = u.text;
          chunk.logprobs = with_logprobs ? &u.logprobs : nullptr;
          chunk.text_offset = &text_offsets[c];
          out += sse_event(chunk_json(meta, chunk, include_usage));
        }
        if (u.finished && !finished[c]) {
          finished[c] = true;
          --remaining;
          completion_tokens += u.completion_tokens;
          ChunkContent last;
          last.index = c;
          last.finish_reason = &u.finish_reason;
          out += sse_event(chunk_json(meta, last, include_usage));
        }
      }
      if (!write(sink, out)) return abandon();
    }
    out.clear();
    if (include_usage) out += sse_event(usage_chunk_json(meta, prompt_tokens, completion_tokens));
    out += kSseDone;
    completed = true;
    if (!write(sink, out)) return false;
    sink.done();
    return true;
  }

  bool write_whole(httplib::DataSink& sink) {
    const int choices = stream->num_choices();
    std::vector<ChoiceUpdate> updates;
    std::vector<ChoiceOutput> outputs(choices);
    for (int c = 0; c < choices; ++c) {
      outputs[c].with_logprobs = with_logprobs;
      if (!echo.empty()) outputs[c].text = echo[c];
    }
    for (int remaining = choices; remaining > 0 && !stream->error();) {
      const bool news = stream->wait_and_take(updates, kPollInterval);
      if (!sink.is_writable()) return abandon();
      if (!news) continue;
      for (int c = 0; c < choices; ++c) {
        ChoiceUpdate& u = updates[c];
        outputs[c].text += u.text;
        for (TokenLogprob& t : u.logprobs) outputs[c].logprobs.push_back(std::move(t));
        if (u.finished && outputs[c].finish_reason.empty()) {
          outputs[c].finish_reason = u.finish_reason;
          outputs[c].completion_tokens = u.completion_tokens;
          --remaining;
        }
      }
    }
    completed = true;
    std::string body;
    if (const std::optional<std::string> error = stream->error()) {
      // The status line (200) is already sent: the client sees the error object in the body.
      body = dump_json(error_json(ApiError{500, *error, "server_error", "", ""}));
    } else {
      body = dump_json(response_json(meta, outputs, prompt_tokens));
    }
    if (!write(sink, body)) return false;
    sink.done();
    return true;
  }
};

}  // namespace

ApiResult<ChatPrompt> render_chat_prompt(const ChatTemplate* chat_template, const Tokenizer& tokenizer,
                                         const std::vector<ChatMessage>& messages) {
  if (!chat_template) {
    return ApiError{
        400,
        "model has no chat template: build the engine with a tokenizer that has one, or start the "
        "server with --chat-template FILE",
        "invalid_request_error", "messages", "no_chat_template"};
  }
  Result<std::string> text = chat_template->render(messages, /*add_generation_prompt=*/true);
  if (!text.ok()) return invalid_param("messages", "chat template: " + text.error().message);
  ChatPrompt prompt{std::move(text).value(), true};
  // Templates usually write the BOS token themselves; adding another would change the prompt.
  const int32_t bos = tokenizer.bos_id();
  if (bos >= 0) {
    const std::string bos_text = tokenizer.piece(bos);
    if (!bos_text.empty() && std::string_view(prompt.text).starts_with(bos_text)) prompt.add_bos = false;
  }
  return prompt;
}

std::vector<SequenceSpec> make_sequence_specs(const CompletionRequest& request,
                                              const std::vector<TokenizedPrompt>& prompts,
                                              const std::vector<int32_t>& max_tokens) {
  std::vector<SequenceSpec> specs;
  std::random_device entropy;
  for (size_t p = 0; p < prompts.size(); ++p) {
    for (int32_t i = 0; i < request.n; ++i) {
      SequenceSpec spec;
      spec.prompt_ids = prompts[p].ids;
      spec.max_tokens = max_tokens[p];
      const uint64_t seed = request.seed ? *request.seed + static_cast<uint64_t>(i)
                                         : (static_cast<uint64_t>(entropy()) << 32 | entropy());
      spec.sampling = SamplingParams{request.temperature,        request.top_k, request.top_p, request.min_p,
                                     request.repetition_penalty, seed};
      spec.presence_penalty = request.presence_penalty;
      spec.frequency_penalty = request.frequency_penalty;
      spec.logit_bias = request.logit_bias;
      spec.stop = request.stop;
      spec.logprobs = request.logprobs;
      spec.tokens_as_ids = request.return_tokens_as_token_ids;
      spec.ignore_eos = request.ignore_eos;
      specs.push_back(std::move(spec));
    }
  }
  return specs;
}

void handle_generation(ModelRegistry& registry, Endpoint endpoint, const httplib::Request& req,
                       httplib::Response& res) {
  const auto arrival = Clock::now();
  if (nested_too_deeply(req.body)) {
    return send_api_error(
        res, ApiError{400, fmt::format("the request body nests deeper than {} levels", kMaxJsonDepth),
                      "invalid_request_error", "", "invalid_json"});
  }
  nlohmann::json body;
  try {
    body = nlohmann::json::parse(req.body);
  } catch (const nlohmann::json::exception& e) {  // parse_error, and out_of_range for 1e400
    return send_api_error(res, ApiError{400, fmt::format("the request body is not valid JSON: {}", e.what()),
                                        "invalid_request_error", "", "invalid_json"});
  }
  ApiResult<CompletionRequest> parsed = parse_completion_request(body, endpoint);
  if (!parsed.ok()) return send_api_error(res, parsed.error());
  const CompletionRequest& request = *parsed;
  std::shared_ptr<EngineWorker> worker = registry.find(request.model);
  if (!worker) {
    if (request.model.empty()) return send_api_error(res, invalid_param("model", "'model' is required"));
    return send_api_error(res, ApiError{404, fmt::format("The model '{}' does not exist", request.model),
                                        "invalid_request_error", "model", "model_not_found"});
  }
  ApiResult<PreparedRequest> prepared = prepare(*worker, request);
  if (!prepared.ok()) {
    worker->metrics().count(RequestOutcome::Invalid);
    return send_api_error(res, prepared.error());
  }

  auto job = std::make_shared<Job>();
  job->arrival = arrival;
  job->sequences = make_sequence_specs(request, prepared->prompts, prepared->max_tokens);
  job->prompt_tokens = prepared->prompt_tokens;
  job->stream = std::make_shared<RequestStream>(static_cast<int>(job->sequences.size()));

  auto writer = std::make_shared<ResponseWriter>();
  writer->worker = worker;
  writer->stream = job->stream;
  writer->meta =
      ResponseMeta{endpoint, random_id(endpoint == Endpoint::ChatCompletions ? "chatcmpl-" : "cmpl-"),
                   unix_seconds(), worker->name()};
  writer->prompt_tokens = prepared->prompt_tokens;
  writer->include_usage = request.include_usage;
  writer->with_logprobs = request.logprobs >= 0;
  if (request.echo) {
    for (const TokenizedPrompt& p : prepared->prompts) {
      for (int32_t i = 0; i < request.n; ++i) writer->echo.push_back(p.text);
    }
  }

  switch (worker->submit(job)) {
    case EngineWorker::Admission::Accepted:
      break;
    case EngineWorker::Admission::QueueFull:
      worker->metrics().count(RequestOutcome::Overloaded);
      res.set_header("Retry-After", "1");
      return send_api_error(res, ApiError{503, "the server is busy: too many requests queued; retry later",
                                          "server_error", "", "server_overloaded"});
    case EngineWorker::Admission::Stopped:
      return send_api_error(
          res, ApiError{503, "the server is shutting down", "server_error", "", "shutting_down"});
  }
  // The writer runs after this handler returns, on the same connection thread; when it did not
  // complete (write failed, client gone, server stopping) the releaser cancels the request.
  auto release = [writer](bool) {
    if (!writer->completed) writer->worker->cancel(writer->stream);
  };
  if (request.stream) {
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream", [writer](size_t, httplib::DataSink& sink) { return writer->write_events(sink); },
        release);
  } else {
    res.set_chunked_content_provider(
        "application/json", [writer](size_t, httplib::DataSink& sink) { return writer->write_whole(sink); },
        release);
  }
}

}  // namespace kiln
