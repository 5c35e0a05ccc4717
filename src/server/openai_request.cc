#include "server/openai_request.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace kiln {

namespace {

using nlohmann::json;

// A field that is absent or null counts as not given (OpenAI accepts null for optional fields).
const json* field(const json& body, const char* name) {
  const auto it = body.find(name);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

std::string type_name(const json& v) {
  if (v.is_number_integer()) return "an integer";
  if (v.is_number()) return "a number";
  if (v.is_string()) return "a string";
  if (v.is_boolean()) return "a boolean";
  if (v.is_array()) return "an array";
  if (v.is_object()) return "an object";
  return "null";
}

// JSON integers, and floats with an integral value (2.0), are integers.
std::optional<int64_t> as_integer(const json& v) {
  if (v.is_number_integer()) {
    if (v.is_number_unsigned() &&
        v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      return std::nullopt;
    return v.get<int64_t>();
  }
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::abs(d) < 9.0e18) return static_cast<int64_t>(d);
  }
  return std::nullopt;
}

std::optional<ApiError> read_number(const json& body, const char* name, double lo, double hi, float& out,
                                    bool lo_open = false) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  const bool in_range = v->is_number() && std::isfinite(v->get<double>()) &&
                        (lo_open ? v->get<double>() > lo : v->get<double>() >= lo) && v->get<double>() <= hi;
  if (!in_range) {
    return invalid_param(name, fmt::format("'{}' must be a number {} {} and {}, got {}", name,
                                           lo_open ? "greater than" : "between", lo, hi,
                                           v->is_number() ? v->dump() : type_name(*v)));
  }
  out = v->get<float>();
  return std::nullopt;
}

std::optional<ApiError> read_integer(const json& body, const char* name, int64_t lo, int64_t hi,
                                     int64_t& out) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  const std::optional<int64_t> i = as_integer(*v);
  if (!i || *i < lo || *i > hi) {
    const std::string range = hi == std::numeric_limits<int64_t>::max()
                                  ? fmt::format(">= {}", lo)
                                  : fmt::format("between {} and {}", lo, hi);
    return invalid_param(name, fmt::format("'{}' must be an integer {}, got {}", name, range,
                                           v->is_number() ? v->dump() : type_name(*v)));
  }
  out = *i;
  return std::nullopt;
}

std::optional<ApiError> read_bool(const json& body, const char* name, bool& out) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_boolean())
    return invalid_param(name, fmt::format("'{}' must be a boolean, got {}", name, type_name(*v)));
  out = v->get<bool>();
  return std::nullopt;
}

std::optional<ApiError> read_token_ids(const json& array, const std::string& param,
                                       std::vector<int32_t>& out) {
  out.clear();
  for (size_t i = 0; i < array.size(); ++i) {
    const std::optional<int64_t> id = as_integer(array[i]);
    if (!id || *id < 0 || *id > std::numeric_limits<int32_t>::max()) {
      return invalid_param(param, fmt::format("'{}' token ids must be integers >= 0, item {} is {}", param, i,
                                              array[i].is_number() ? array[i].dump() : type_name(array[i])));
    }
    out.push_back(static_cast<int32_t>(*id));
  }
  return std::nullopt;
}

// "prompt": a string, an array of strings, an array of token ids, or an array of arrays of ids.
std::optional<ApiError> read_prompts(const json& body, std::vector<PromptInput>& prompts) {
  const json* v = field(body, "prompt");
  if (!v) return invalid_param("prompt", "'prompt' is required");
  const char* shape =
      "'prompt' must be a string, an array of strings, an array of token ids or an array of arrays of token "
      "ids";
  if (v->is_string()) {
    prompts.push_back({false, v->get<std::string>(), {}});
    return std::nullopt;
  }
  if (!v->is_array()) return invalid_param("prompt", fmt::format("{}, got {}", shape, type_name(*v)));
  if (v->empty()) return invalid_param("prompt", "'prompt' must not be an empty array");
  // Each prompt becomes a sequence, and a request may have 256 (kMaxChoices in generation_endpoint.cc):
  // refuse more before copying them (690k prompts of one token id took ~170 MiB).
  constexpr size_t kMaxPrompts = 256;
  if (!(*v)[0].is_number() && v->size() > kMaxPrompts) {
    return invalid_param("prompt", fmt::format("{} prompts: at most {} per request", v->size(), kMaxPrompts));
  }
  if ((*v)[0].is_number()) {
    PromptInput p{true, "", {}};
    if (auto e = read_token_ids(*v, "prompt", p.ids)) return e;
    prompts.push_back(std::move(p));
    return std::nullopt;
  }
  for (size_t i = 0; i < v->size(); ++i) {
    const json& item = (*v)[i];
    if (item.is_string()) {
      prompts.push_back({false, item.get<std::string>(), {}});
    } else if (item.is_array() && !item.empty()) {
      PromptInput p{true, "", {}};
      if (auto e = read_token_ids(item, "prompt", p.ids)) return e;
      prompts.push_back(std::move(p));
    } else {
      return invalid_param("prompt", fmt::format("{}; item {} is {}", shape, i,
                                                 item.is_array() ? "an empty array" : type_name(item)));
    }
  }
  return std::nullopt;
}

std::optional<ApiError> read_messages(const json& body, std::vector<ChatMessage>& messages) {
  const json* v = field(body, "messages");
  if (!v) return invalid_param("messages", "'messages' is required");
  if (!v->is_array() || v->empty()) return invalid_param("messages", "'messages' must be a non-empty array");
  for (size_t i = 0; i < v->size(); ++i) {
    const json& m = (*v)[i];
    const std::string at = fmt::format("messages[{}]", i);
    if (!m.is_object())
      return invalid_param(at, fmt::format("'{}' must be an object, got {}", at, type_name(m)));
    const json* role = field(m, "role");
    static const char* const kRoles[] = {"system", "developer", "user", "assistant", "tool", "function"};
    if (!role || !role->is_string() ||
        std::find(std::begin(kRoles), std::end(kRoles), role->get<std::string>()) == std::end(kRoles)) {
      return invalid_param(
          at + ".role", fmt::format("'{}.role' must be one of system, developer, user, assistant, tool", at));
    }
    ChatMessage message{role->get<std::string>(), ""};
    const json* content = field(m, "content");
    if (content && content->is_string()) {
      message.content = content->get<std::string>();
    } else if (content && content->is_array()) {
      // Content parts: only text is supported; parts are joined as OpenAI joins them for text-only models.
      for (size_t p = 0; p < content->size(); ++p) {
        const json& part = (*content)[p];
        const json* type = part.is_object() ? field(part, "type") : nullptr;
        const json* text = part.is_object() ? field(part, "text") : nullptr;
        if (!type || *type != "text" || !text || !text->is_string()) {
          return invalid_param(
              fmt::format("{}.content[{}]", at, p),
              fmt::format("'{}.content[{}]' must be {{\"type\": \"text\", \"text\": string}}: "
                          "only text content is supported",
                          at, p));
        }
        message.content += text->get<std::string>();
      }
    } else if (content || message.role != "assistant") {
      return invalid_param(at + ".content",
                           fmt::format("'{}.content' must be a string or an array of text parts, got {}", at,
                                       content ? type_name(*content) : "nothing"));
    }
    messages.push_back(std::move(message));
  }
  return std::nullopt;
}

std::optional<ApiError> read_stop(const json& body, std::vector<std::string>& stop) {
  const json* v = field(body, "stop");
  if (!v) return std::nullopt;
  if (v->is_string()) {
    stop.push_back(v->get<std::string>());
  } else if (v->is_array() && v->size() <= 4) {
    for (const json& s : *v) {
      if (!s.is_string())
        return invalid_param("stop", "'stop' must be a string or an array of up to 4 strings");
      stop.push_back(s.get<std::string>());
    }
  } else {
    return invalid_param("stop", "'stop' must be a string or an array of up to 4 strings");
  }
  for (const std::string& s : stop) {
    if (s.empty()) return invalid_param("stop", "'stop' strings must not be empty");
  }
  return std::nullopt;
}

std::optional<ApiError> read_logit_bias(const json& body, std::vector<std::pair<int32_t, float>>& bias) {
  const json* v = field(body, "logit_bias");
  if (!v) return std::nullopt;
  if (!v->is_object()) return invalid_param("logit_bias", "'logit_bias' must be an object {token id: bias}");
  for (const auto& [key, value] : v->items()) {
    int64_t id = -1;
    try {
      size_t used = 0;
      id = std::stoll(key, &used);
      if (used != key.size()) id = -1;
    } catch (const std::exception&) {
      id = -1;
    }
    if (id < 0 || id > std::numeric_limits<int32_t>::max())
      return invalid_param("logit_bias", fmt::format("'logit_bias' keys must be token ids, got '{}'", key));
    if (!value.is_number() || value.get<double>() < -100.0 || value.get<double>() > 100.0)
      return invalid_param("logit_bias",
                           fmt::format("'logit_bias' values must be numbers between -100 and 100"));
    bias.emplace_back(static_cast<int32_t>(id), value.get<float>());
  }
  return std::nullopt;
}

}  // namespace

// Request fields that change what the answer means and that kiln does not implement yet: a 400 naming
// the field instead of a 200 that silently ignores it (a JSON-mode client would get prose). The value
// that means "off" is accepted where the API has one.
std::optional<ApiError> refuse_unimplemented(const json& body, bool chat) {
  const auto refuse = [](const std::string& name, const std::string& what) {
    ApiError e = invalid_param(name, fmt::format("'{}' ({}) is not supported by kiln yet", name, what));
    e.code = "unsupported_parameter";
    return e;
  };
  const auto present = [&](const char* name) {
    const json* v = field(body, name);
    return v && !v->is_null();
  };
  if (const json* v = field(body, "response_format"); v && !v->is_null()) {
    const bool text = v->is_object() && v->contains("type") && (*v)["type"] == "text";
    if (!text) return refuse("response_format", "structured output; only {\"type\": \"text\"} is accepted");
  }
  if (const json* v = field(body, "tools"); v && !v->is_null() && !(v->is_array() && v->empty())) {
    return refuse("tools", "function calling");
  }
  if (const json* v = field(body, "tool_choice"); v && !v->is_null() && *v != "none") {
    return refuse("tool_choice", "function calling; only \"none\" is accepted");
  }
  for (const char* name : {"functions", "function_call"}) {
    if (present(name)) return refuse(name, "legacy function calling");
  }
  // Constrained decoding under the names vLLM and llama.cpp's server use.
  for (const char* name : {"guided_json", "guided_regex", "guided_choice", "guided_grammar", "guided_decoding_backend",
                           "json_schema", "grammar", "regex", "choice", "structured_outputs"}) {
    if (present(name)) return refuse(name, "constrained decoding");
  }
  if (const json* v = field(body, "best_of"); v && !v->is_null() && !(v->is_number_integer() && *v == 1)) {
    return refuse("best_of", "server-side best-of-n; use 'n'");
  }
  if (const json* v = field(body, "suffix"); !chat && v && !v->is_null() && !(v->is_string() && v->get<std::string>().empty())) {
    return refuse("suffix", "insertion");
  }
  if (const json* v = field(body, "modalities"); v && !v->is_null() && *v != json::array({"text"})) {
    return refuse("modalities", "only [\"text\"]");
  }
  if (present("audio")) return refuse("audio", "audio output");
  if (present("prediction")) return refuse("prediction", "predicted outputs");
  if (present("web_search_options")) return refuse("web_search_options", "web search");
  return std::nullopt;
}

ApiResult<CompletionRequest> parse_completion_request(const json& body, Endpoint endpoint) {
  if (!body.is_object()) return invalid_param("", "the request body must be a JSON object");
  CompletionRequest r;
  r.endpoint = endpoint;
  const bool chat = endpoint == Endpoint::ChatCompletions;
  if (const json* model = field(body, "model")) {
    if (!model->is_string()) return invalid_param("model", "'model' must be a string");
    r.model = model->get<std::string>();
  }
  if (chat) {
    if (auto e = read_messages(body, r.messages)) return *e;
  } else {
    if (auto e = read_prompts(body, r.prompts)) return *e;
  }
  constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max();
  int64_t value = 0;
  for (const char* name : {"max_tokens", "max_completion_tokens"}) {
    if (!chat && std::string_view(name) == "max_completion_tokens") continue;
    if (!field(body, name)) continue;
    if (auto e = read_integer(body, name, 1, kIntMax, value)) return *e;
    r.max_tokens = static_cast<int32_t>(value);  // max_completion_tokens, read last, wins
  }
  if (auto e = read_number(body, "temperature", 0.0, 2.0, r.temperature)) return *e;
  if (auto e = read_number(body, "top_p", 0.0, 1.0, r.top_p, /*lo_open=*/true)) return *e;
  if (auto e = read_number(body, "min_p", 0.0, 1.0, r.min_p)) return *e;
  if (auto e = read_number(body, "repetition_penalty", 0.0, 10.0, r.repetition_penalty, true)) return *e;
  if (auto e = read_number(body, "presence_penalty", -2.0, 2.0, r.presence_penalty)) return *e;
  if (auto e = read_number(body, "frequency_penalty", -2.0, 2.0, r.frequency_penalty)) return *e;
  value = 0;
  if (auto e = read_integer(body, "top_k", -1, kIntMax, value)) return *e;
  r.top_k = static_cast<int32_t>(std::max<int64_t>(value, 0));
  if (field(body, "seed")) {
    if (auto e = read_integer(body, "seed", std::numeric_limits<int64_t>::min(),
                              std::numeric_limits<int64_t>::max(), value))
      return *e;
    r.seed = static_cast<uint64_t>(value);
  }
  value = 1;
  if (auto e = read_integer(body, "n", 1, 128, value)) return *e;
  r.n = static_cast<int32_t>(value);
  if (auto e = read_stop(body, r.stop)) return *e;
  if (auto e = read_logit_bias(body, r.logit_bias)) return *e;
  if (auto e = read_bool(body, "stream", r.stream)) return *e;
  if (const json* options = field(body, "stream_options")) {
    if (!options->is_object()) return invalid_param("stream_options", "'stream_options' must be an object");
    if (auto e = read_bool(*options, "include_usage", r.include_usage)) {
      e->param = "stream_options.include_usage";
      return *e;
    }
  }
  if (auto e = read_bool(body, "ignore_eos", r.ignore_eos)) return *e;
  if (auto e = read_bool(body, "return_tokens_as_token_ids", r.return_tokens_as_token_ids)) return *e;
  if (chat) {
    bool logprobs = false;
    if (auto e = read_bool(body, "logprobs", logprobs)) return *e;
    value = 0;
    if (auto e = read_integer(body, "top_logprobs", 0, 20, value)) return *e;
    if (field(body, "top_logprobs") && !logprobs)
      return invalid_param("top_logprobs", "'top_logprobs' needs 'logprobs' set to true");
    r.logprobs = logprobs ? static_cast<int32_t>(value) : -1;
  } else {
    if (field(body, "logprobs")) {
      if (auto e = read_integer(body, "logprobs", 0, 5, value)) return *e;
      r.logprobs = static_cast<int32_t>(value);
    }
    if (auto e = read_bool(body, "echo", r.echo)) return *e;
    if (r.echo && r.logprobs >= 0)
      return invalid_param("echo", "'echo' together with 'logprobs' is not supported (prompt logprobs)");
  }
  if (const json* user = field(body, "user"); user && !user->is_string())
    return invalid_param("user", "'user' must be a string");
  if (auto e = refuse_unimplemented(body, chat)) return *e;
  return r;
}

ApiResult<int32_t> fit_to_context(const std::vector<int32_t>& prompt_ids, std::optional<int32_t> max_tokens,
                                  const ModelLimits& limits, const std::string& prompt_param) {
  const int64_t prompt_len = static_cast<int64_t>(prompt_ids.size());
  if (prompt_len == 0) return invalid_param(prompt_param, "the prompt has no tokens");
  for (int32_t id : prompt_ids) {
    if (id >= limits.vocab_size) {
      return invalid_param(prompt_param, fmt::format("token id {} is outside the vocabulary of {} tokens", id,
                                                     limits.vocab_size));
    }
  }
  // The longest sequence this request may build: the context, and what the whole KV cache holds (the
  // last sampled token needs no KV, hence the + 1).
  const int64_t limit = std::min(limits.max_seq_len, limits.kv_capacity_tokens + 1);
  auto too_long = [&](int64_t requested) {
    ApiError e = invalid_param(
        max_tokens ? "max_tokens" : prompt_param,
        fmt::format("This model's maximum context length is {} tokens. However, you requested {} tokens "
                    "({} in the {}, {} in the completion). Please reduce the length of the {} or completion.",
                    limit, prompt_len + requested, prompt_len, prompt_param, requested, prompt_param));
    e.code = "context_length_exceeded";
    return e;
  };
  if (prompt_len >= limit) return too_long(max_tokens.value_or(0));
  if (!max_tokens) return static_cast<int32_t>(limit - prompt_len);
  if (prompt_len + *max_tokens > limit) return too_long(*max_tokens);
  return *max_tokens;
}

}  // namespace kiln
