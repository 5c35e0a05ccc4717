#include "format/hf_config.h"

#include <array>
#include <filesystem>
#include <optional>

#include <fmt/ranges.h>

#include "common/mapped_file.h"
#include "format/json_util.h"

namespace kiln {
namespace {

using Json = nlohmann::ordered_json;

// The architectures one builder serves with flags; defaults are those of the transformers config
// classes (LlamaConfig, MistralConfig, Qwen2Config) for fields a config.json may omit.
struct ArchitectureInfo {
  const char* name;
  bool qkv_bias;            // Qwen2Attention: q/k/v Linear(bias=True), o_proj without
  bool reads_bias_fields;   // LlamaConfig has attention_bias and mlp_bias
};
constexpr std::array<ArchitectureInfo, 3> kArchitectures{{
    {"LlamaForCausalLM", false, true},
    {"MistralForCausalLM", false, false},
    {"Qwen2ForCausalLM", true, false},
}};
constexpr double kDefaultRmsNormEps = 1e-6;
constexpr double kDefaultRopeTheta = 10000.0;

using Fields = JsonFields;

Result<const ArchitectureInfo*> parse_architecture(const Fields& config) {
  if (!config.has("architectures")) return config.missing("architectures");
  const Json& list = config.at("architectures");
  if (!list.is_array() || list.empty() || !list[0].is_string()) {
    return config.type_error("architectures", "a non-empty list of names");
  }
  const std::string name = list[0].get<std::string>();
  std::vector<std::string> supported;
  for (const ArchitectureInfo& arch : kArchitectures) {
    if (name == arch.name) return &arch;
    supported.emplace_back(arch.name);
  }
  return make_error("{}: unsupported architecture '{}' (supported: {})", config.where(), name,
                    fmt::join(supported, ", "));
}

// bos_token_id / eos_token_id: an integer, a list of integers, or null.
Result<std::vector<int64_t>> parse_token_ids(const Fields& config, const char* key) {
  std::vector<int64_t> ids;
  if (!config.has(key)) return ids;
  const Json& v = config.at(key);
  const auto add = [&](const Json& item) -> Status {
    if (!item.is_number_unsigned() || item.get<uint64_t>() > INT64_MAX) {
      return config.type_error(key, "a non-negative integer, a list of them, or null");
    }
    ids.push_back(static_cast<int64_t>(item.get<uint64_t>()));
    return Status::Ok();
  };
  if (v.is_array()) {
    for (const Json& item : v) KILN_TRY(add(item));
  } else {
    KILN_TRY(add(v));
  }
  return ids;
}

// RoPE from either transformers-5 `rope_parameters` {rope_theta, rope_type, factor, ...} or the
// older top-level `rope_theta` + `rope_scaling` {type | rope_type, factor, ...}. Field meanings:
// transformers modeling_rope_utils (_compute_linear_scaling_rope_parameters,
// _compute_llama3_parameters).
Status parse_rope(const Json& json, const Fields& config, ModelConfig* c) {
  KILN_ASSIGN(const std::optional<double> top_theta, config.optional_number("rope_theta"));
  c->rope_theta = top_theta.value_or(kDefaultRopeTheta);

  const char* block_key = config.has("rope_parameters") ? "rope_parameters" : "rope_scaling";
  if (!config.has(block_key)) return Status::Ok();
  const Json& block = json[block_key];
  if (!block.is_object()) return config.type_error(block_key, "an object");
  const Fields rope(block, fmt::format("{}: {}", config.where(), block_key));

  if (std::string(block_key) == "rope_parameters") {
    KILN_ASSIGN(const std::optional<double> theta, rope.optional_number("rope_theta"));
    if (theta) c->rope_theta = *theta;
    KILN_ASSIGN(const std::optional<double> partial, rope.optional_number("partial_rotary_factor"));
    if (partial && *partial != 1.0) {
      return make_error("{}: partial_rotary_factor {} not supported (expected 1.0)", rope.where(), *partial);
    }
  }
  KILN_ASSIGN(std::optional<std::string> type, rope.optional_string("rope_type"));
  if (!type) {
    KILN_ASSIGN(type, rope.optional_string("type"));
  }
  if (!type) {
    // transformers-5 nests one block per layer type for models that mix attention kinds.
    return make_error("{}: missing 'rope_type' (per-layer-type RoPE blocks are not supported)", rope.where());
  }

  if (*type == "default") {
    c->rope_scaling = RopeScaling::None;
  } else if (*type == "linear") {
    c->rope_scaling = RopeScaling::Linear;
    KILN_ASSIGN(c->rope_factor, rope.required_number("factor"));
  } else if (*type == "llama3") {
    c->rope_scaling = RopeScaling::Llama3;
    KILN_ASSIGN(c->rope_factor, rope.required_number("factor"));
    KILN_ASSIGN(c->rope_low_freq_factor, rope.required_number("low_freq_factor"));
    KILN_ASSIGN(c->rope_high_freq_factor, rope.required_number("high_freq_factor"));
    KILN_ASSIGN(c->rope_original_max_position, rope.required_int("original_max_position_embeddings"));
  } else {
    return make_error("{}: unsupported rope type '{}' (supported: default, linear, llama3)", rope.where(), *type);
  }
  return Status::Ok();
}

// kiln runs full causal attention; a window shorter than the context would change the results.
Status check_full_attention(const Json& json, const Fields& config, const ArchitectureInfo& arch,
                            const ModelConfig& c) {
  KILN_ASSIGN(const bool use_window, config.bool_or("use_sliding_window", true));  // Qwen2's switch
  const bool window_applies = std::string(arch.name) == "MistralForCausalLM" ||
                              (std::string(arch.name) == "Qwen2ForCausalLM" && use_window);
  if (window_applies) {
    KILN_ASSIGN(const std::optional<int64_t> window, config.optional_int("sliding_window"));
    if (window && *window < c.max_position_embeddings) {
      return make_error(
          "{}: sliding_window {} is smaller than max_position_embeddings {}: sliding window attention not "
          "supported",
          config.where(), *window, c.max_position_embeddings);
    }
  }
  if (config.has("layer_types")) {
    const Json& types = json["layer_types"];
    if (!types.is_array()) return config.type_error("layer_types", "a list");
    for (size_t i = 0; i < types.size(); ++i) {
      if (types[i] != "full_attention") {
        return make_error("{}: layer_types[{}] is {}; only full_attention is supported", config.where(), i,
                          json_describe(types[i]));
      }
    }
  }
  return Status::Ok();
}

Result<ModelConfig> parse_config(const std::string& text, const std::string& source) {
  KILN_ASSIGN(const Json json, parse_json_strict(text, source));
  if (!json.is_object()) return make_error("{}: expected a JSON object, found {}", source, json_describe(json));
  const Fields config(json, source);
  KILN_ASSIGN(const ArchitectureInfo* arch, parse_architecture(config));

  ModelConfig c;
  c.architecture = arch->name;
  KILN_ASSIGN(c.vocab_size, config.required_int("vocab_size"));
  KILN_ASSIGN(c.hidden_size, config.required_int("hidden_size"));
  KILN_ASSIGN(c.intermediate_size, config.required_int("intermediate_size"));
  KILN_ASSIGN(c.num_layers, config.required_int("num_hidden_layers"));
  KILN_ASSIGN(c.num_heads, config.required_int("num_attention_heads"));
  KILN_ASSIGN(c.max_position_embeddings, config.required_int("max_position_embeddings"));
  KILN_ASSIGN(const std::optional<int64_t> kv_heads, config.optional_int("num_key_value_heads"));
  c.num_kv_heads = kv_heads.value_or(c.num_heads);  // absent: multi-head attention
  KILN_ASSIGN(const std::optional<int64_t> head_dim, config.optional_int("head_dim"));
  if (head_dim) {
    c.head_dim = *head_dim;
  } else {
    if (c.num_heads <= 0 || c.hidden_size % c.num_heads != 0) {
      return make_error("{}: no head_dim, and hidden_size {} is not a multiple of num_attention_heads {}", source,
                        c.hidden_size, c.num_heads);
    }
    c.head_dim = c.hidden_size / c.num_heads;
  }
  KILN_ASSIGN(const std::optional<double> eps, config.optional_number("rms_norm_eps"));
  c.rms_norm_eps = eps.value_or(kDefaultRmsNormEps);
  KILN_ASSIGN(c.tie_word_embeddings, config.bool_or("tie_word_embeddings", false));

  c.attention_bias = arch->qkv_bias;
  if (arch->reads_bias_fields) {
    // LlamaAttention applies attention_bias to q, k, v and o alike.
    KILN_ASSIGN(c.attention_bias, config.bool_or("attention_bias", false));
    c.o_proj_bias = c.attention_bias;
    KILN_ASSIGN(c.mlp_bias, config.bool_or("mlp_bias", false));
  }

  KILN_ASSIGN(const std::optional<std::string> activation, config.optional_string("hidden_act"));
  if (activation && *activation != "silu") {
    return make_error("{}: hidden_act '{}' not supported (expected silu)", source, *activation);
  }

  KILN_ASSIGN(const std::vector<int64_t> bos, parse_token_ids(config, "bos_token_id"));
  if (bos.size() > 1) return config.type_error("bos_token_id", "a single token id");
  c.bos_token_id = bos.empty() ? -1 : bos[0];
  KILN_ASSIGN(c.eos_token_ids, parse_token_ids(config, "eos_token_id"));

  KILN_TRY(parse_rope(json, config, &c));
  KILN_TRY(check_full_attention(json, config, *arch, c));
  const Status valid = c.validate();
  if (!valid.ok()) return valid.error().with_context(source);
  return c;
}

}  // namespace

Result<ModelConfig> parse_hf_config(const std::string& json_text) { return parse_config(json_text, "config.json"); }

Result<ModelConfig> read_hf_config(const std::string& model_dir) {
  const std::string path = (std::filesystem::path(model_dir) / "config.json").string();
  KILN_ASSIGN(const std::string text, read_text_file(path));
  return parse_config(text, path);
}

}  // namespace kiln
