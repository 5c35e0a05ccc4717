#include "compiler/build_engine.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <optional>

#include "backend/backend.h"
#include "backend/kv_cache_dtype.h"
#include "engine/engine_file.h"
#include "common/mapped_file.h"
#include "format/gguf_model.h"
#include "format/hf_config.h"
#include "format/hf_quant.h"
#include "format/hf_tokenizer_config.h"
#include "format/llama2c.h"
#include "format/safetensors.h"
#include "compiler/quantize_model.h"
#include "model/llama_builder.h"
#include "passes/passes.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace kiln {

namespace fs = std::filesystem;

namespace {

struct ImportedModel {
  ModelConfig config;
  std::map<std::string, TensorView> tensors;
  std::shared_ptr<void> keep_alive;  // shards / mapping backing the views
  DType source_dtype = DType::F32;
  std::string default_tokenizer;     // tokenizer file found beside the model, if any
  // A pre-quantized HF checkpoint (format/hf_quant.h): awq / gptq Linear weights in kiln's layout
  // (absent from `tensors`), fp8 ones already dequantized into `tensors`; null metadata otherwise.
  std::map<std::string, QuantizedMatrix> quantized;
  nlohmann::json checkpoint_quant = nullptr;
  std::vector<std::string> checkpoint_quant_notes;
  // A GGUF file carries its tokenizer and chat template (format/gguf_model.h).
  std::optional<std::pair<TokenizerSource, std::string>> embedded_tokenizer;
  std::optional<HfChatTemplate> embedded_chat_template;
};

// A GGUF file: config, tensors (quantized ones kept in kiln's layouts), tokenizer and chat template.
Status import_gguf(const std::string& path, ImportedModel& model) {
  KILN_ASSIGN(GgufModel gguf, import_gguf_model(path));
  model.config = gguf.config;
  model.tensors = gguf.tensors;
  model.source_dtype = gguf.source_dtype;
  if (!gguf.quantized.empty()) {
    std::map<std::string, int> types;  // "Q4_1 -> int4 g32 f16 +min": matrices
    for (const std::string& note : gguf.layout_notes) {
      if (note.find(" -> ") != std::string::npos) ++types[note.substr(note.find(' ') + 1)];
    }
    std::string description;
    for (const auto& [layout, count] : types) description += fmt::format("{}{} x {}", description.empty() ? "" : ", ", count, layout);
    // Each GGUF tensor's type and the kiln layout it became ("blk.0.attn_q.weight": "Q4_K -> int4 g32
    // f32 +min"), for `kiln inspect`.
    nlohmann::json tensors = nlohmann::json::object();
    for (const std::string& note : gguf.layout_notes) {
      const size_t space = note.find(' ');
      tensors[note.substr(0, space)] = note.substr(space + 1);
    }
    model.checkpoint_quant = {{"quant_method", "gguf"},
                              {"description", "GGUF " + description},
                              {"quantized_matrices", gguf.quantized.size()},
                              {"dequantized_matrices", 0},
                              {"requantized_matrices", 0},
                              {"gguf_tensors", tensors}};
    model.checkpoint_quant_notes = gguf.notes;
    model.quantized = std::move(gguf.quantized);
  }
  if (!gguf.tokenizer_bytes.empty()) model.embedded_tokenizer = std::make_pair(gguf.tokenizer_source, gguf.tokenizer_bytes);
  if (!gguf.chat_template.empty()) {
    HfChatTemplate chat;
    chat.source = gguf.chat_template;
    chat.origin = path + " (tokenizer.chat_template)";
    chat.bos_token = gguf.bos_token;
    chat.eos_token = gguf.eos_token;
    chat.has_tokenizer_config = true;
    model.embedded_chat_template = std::move(chat);
  }
  model.keep_alive = std::make_shared<GgufModel>(std::move(gguf));
  return Status::Ok();
}

// Reads config.json's quantization_config and unpacks what it describes into `model`.
Status import_prequantized(const std::string& path, ImportedModel& model) {
  KILN_ASSIGN(const std::optional<HfQuantConfig> quant, read_hf_quant_config(path));
  if (!quant) {
    for (const auto& [name, t] : model.tensors) {
      if (name.ends_with(".qweight")) {
        return make_error("{}: tensor '{}' is packed but config.json has no quantization_config", path, name);
      }
    }
    return Status::Ok();
  }
  auto unpacked = unpack_hf_quantized(*quant, model.tensors);
  if (!unpacked.ok()) return unpacked.error().with_context(path);
  for (const std::string& name : unpacked->consumed) model.tensors.erase(name);
  for (auto& [name, t] : unpacked->dequantized) model.tensors[name] = std::move(t);
  model.checkpoint_quant = {{"quant_method", quant->quant_method},
                            {"description", quant->description},
                            {"quantized_matrices", unpacked->quantized.size()},
                            {"dequantized_matrices", unpacked->dequantized.size()},
                            {"requantized_matrices", unpacked->requantized}};
  model.checkpoint_quant_notes = std::move(unpacked->notes);
  model.quantized = std::move(unpacked->quantized);
  return Status::Ok();
}

Result<ImportedModel> import_model(const std::string& path) {
  ImportedModel model;
  std::error_code ec;
  if (!fs::exists(path, ec)) return make_error("{}: no such file or directory", path);
  if (fs::is_directory(path, ec)) {
    KILN_ASSIGN(model.config, read_hf_config(path));
    KILN_ASSIGN(WeightSet weights, open_safetensors_dir(path));
    model.tensors = weights.tensors;
    model.keep_alive = std::make_shared<WeightSet>(std::move(weights));
    KILN_TRY(import_prequantized(path, model));
    const auto embed = model.tensors.find("model.embed_tokens.weight");
    if (embed != model.tensors.end()) model.source_dtype = embed->second.dtype;
    for (const char* name : {"tokenizer.json", "tokenizer.model"}) {
      if (fs::exists(fs::path(path) / name, ec)) {
        model.default_tokenizer = (fs::path(path) / name).string();
        break;
      }
    }
    return model;
  }
  if (is_gguf_file(path)) {
    KILN_TRY(import_gguf(path, model));
    return model;
  }
  KILN_ASSIGN(Llama2cCheckpoint checkpoint, open_llama2c(path));
  model.config = checkpoint.config;
  model.tensors = checkpoint.tensors;
  model.keep_alive = std::make_shared<Llama2cCheckpoint>(std::move(checkpoint));
  const fs::path dir = fs::path(path).parent_path();
  for (const std::string name : {std::string("tokenizer.bin"), fmt::format("tok{}.bin", model.config.vocab_size)}) {
    if (fs::exists(dir / name, ec)) model.default_tokenizer = (dir / name).string();
  }
  return model;
}

Result<DType> parse_dtype(const std::string& name, DType source) {
  if (name == "auto") return source;
  if (name == "fp32" || name == "f32") return DType::F32;
  if (name == "fp16" || name == "f16") return DType::F16;
  if (name == "bf16") return DType::BF16;
  return make_error("unknown --dtype '{}': expected fp32, fp16, bf16 or auto", name);
}

std::string tokenizer_source_name(TokenizerSource source) {
  switch (source) {
    case TokenizerSource::HfJson: return "hf_json";
    case TokenizerSource::SentencePieceModel: return "sentencepiece";
    case TokenizerSource::Llama2cBin: return "llama2c";
    case TokenizerSource::LlamaCppSpm: return "llama_cpp_spm";
  }
  return "?";
}

// The chat template to embed: --chat-template FILE, else the model directory's (chat_template.jinja or
// tokenizer_config.json's "chat_template"). Parsed here, before the weights are converted, so a
// template kiln cannot run fails the build naming its file rather than the first chat request.
Result<HfChatTemplate> find_chat_template(const BuildOptions& options, const std::optional<HfChatTemplate>& embedded) {
  HfChatTemplate chat;
  std::error_code ec;
  if (embedded) chat = *embedded;
  if (fs::is_directory(options.model_path, ec)) {
    KILN_ASSIGN(chat, read_hf_chat_template(options.model_path));
  }
  if (!options.chat_template_path.empty()) {
    KILN_ASSIGN(chat.source, read_text_file(options.chat_template_path));
    chat.origin = options.chat_template_path;
    if (chat.source.empty()) return make_error("{}: the chat template file is empty", chat.origin);
  }
  if (!chat.source.empty()) {
    auto parsed = ChatTemplate::parse(chat.source, "", "");
    if (!parsed.ok()) return parsed.error().with_context(chat.origin);
  }
  return chat;
}

// A special token's text as a chat template should print it: the tokenizer's piece without the
// newlines llama2.c's tokenizer.bin wraps "<s>" and "</s>" in.
std::string special_token_text(const Tokenizer& tokenizer, int32_t id) {
  if (id < 0) return "";
  std::string piece = tokenizer.piece(id);
  const size_t begin = piece.find_first_not_of(" \t\r\n");
  if (begin == std::string::npos) return "";
  return piece.substr(begin, piece.find_last_not_of(" \t\r\n") - begin + 1);
}

}  // namespace

Result<ShapeProfile> parse_profile(const std::string& text) {
  ShapeProfile p;
  bool have_batch = false, have_seq = false;
  size_t at = 0;
  while (at <= text.size()) {
    const size_t end = std::min(text.find(',', at), text.size());
    const std::string item = text.substr(at, end - at);
    const size_t eq = item.find('=');
    int64_t v[3] = {0, 0, 0};
    char tail = 0;
    if (eq == std::string::npos ||
        std::sscanf(item.c_str() + eq + 1, "%ld:%ld:%ld%c", &v[0], &v[1], &v[2], &tail) != 3 || v[0] <= 0 ||
        v[0] > v[1] || v[1] > v[2]) {
      return make_error("--profile: '{}' is not NAME=min:opt:max with 0 < min <= opt <= max", item);
    }
    const std::string name = item.substr(0, eq);
    if (name == "batch") {
      p.min_batch = v[0], p.opt_batch = v[1], p.max_batch = v[2], have_batch = true;
    } else if (name == "seq") {
      p.min_seq = v[0], p.opt_seq = v[1], p.max_seq = v[2], have_seq = true;
    } else {
      return make_error("--profile: unknown dimension '{}' (expected batch and seq)", name);
    }
    at = end + 1;
  }
  if (!have_batch || !have_seq) return make_error("--profile: give both batch=min:opt:max and seq=min:opt:max");
  return p;
}

namespace {

// --kv-cache's spellings: fp32 / f32, fp16 / f16, int8.
std::optional<KvCacheDtype> parse_kv_cache_option(const std::string& name) {
  if (name == "fp32" || name == "f32") return KvCacheDtype::Fp32;
  if (name == "fp16" || name == "f16") return KvCacheDtype::Fp16;
  if (name == "int8") return KvCacheDtype::Int8;
  return std::nullopt;
}

// The KV cache an engine records. cpu: auto is fp16 for fp16 / bf16 engines (half the bytes; K and V
// are rounded to the precision the weights already had, or near it) and fp32 for fp32 engines, which
// must match the float64 reference to ~1e-6. cuda: nullopt (the activation dtype, the only cache its
// kernels read); int8 is recorded so that the run side refuses it with one line naming it, fp32 and
// an fp16 cache on a bf16 engine are refused here.
Result<std::optional<KvCacheDtype>> choose_kv_cache(const std::string& option, const std::string& backend, DType dtype) {
  const std::optional<KvCacheDtype> asked = parse_kv_cache_option(option);
  if (backend == "cuda") {
    if (!asked || (*asked == KvCacheDtype::Fp16 && dtype == DType::F16)) return std::optional<KvCacheDtype>();
    if (*asked == KvCacheDtype::Int8) return asked;
    return make_error("--kv-cache {}: the cuda backend keeps the KV cache in the activation dtype ({}); use --kv-cache auto",
                      option, dtype_name(dtype));
  }
  if (asked) return asked;
  return std::optional<KvCacheDtype>(dtype == DType::F32 ? KvCacheDtype::Fp32 : KvCacheDtype::Fp16);
}

}  // namespace

Result<BuildReport> build_engine(const BuildOptions& options) {
  if (options.backend != "cpu" && options.backend != "cuda") {
    return make_error("unknown --backend '{}': expected cpu or cuda", options.backend);
  }
  if (options.max_batch <= 0) return make_error("--max-batch must be positive, got {}", options.max_batch);
  if (options.kv_cache != "auto" && !parse_kv_cache_option(options.kv_cache)) {
    return make_error("unknown --kv-cache '{}': expected auto, fp32, fp16 or int8", options.kv_cache);
  }
  KILN_ASSIGN(ImportedModel imported, import_model(options.model_path));
  // Weights a checkpoint stores quantized stay as they are; fp8 ones were dequantized and may be.
  if (!imported.quantized.empty() && options.quant != "none") {
    return make_error("--quant {}: {} is already quantized ({}); build it without --quant",
                      options.quant, options.model_path, imported.checkpoint_quant["description"].get<std::string>());
  }
  KILN_ASSIGN(HfChatTemplate chat_template, find_chat_template(options, imported.embedded_chat_template));
  const ModelConfig& config = imported.config;
  ShapeProfile profile;
  profile.max_batch = options.max_batch;
  profile.opt_batch = std::min<int64_t>(profile.opt_batch, profile.max_batch);
  // The longest sequence the engine serves, which sizes the KV cache. Default: the model's own context
  // (max_position_embeddings; llama2.c seq_len). The CPU cache is committed page by page as positions
  // are written, so a long default costs nothing until used; CUDA plans attention workspaces for it,
  // so its default stays at most 4096.
  const int64_t model_context = config.max_position_embeddings > 0 ? config.max_position_embeddings : 2048;
  profile.max_seq = options.max_seq_len > 0 ? options.max_seq_len
                    : options.backend == "cuda" ? std::min<int64_t>(model_context, 4096)
                                                : model_context;
  profile.opt_seq = std::min(profile.opt_seq, profile.max_seq);
  if (!options.profile.empty()) {
    KILN_ASSIGN(profile, parse_profile(options.profile));
  }
  const int64_t max_seq_len = profile.max_seq;
  BuildReport report;
  if (max_seq_len > model_context && config.max_position_embeddings > 0) {
    // Allowed, as transformers allows it for RoPE models: positions past the training context run,
    // but the model never saw them.
    report.warnings.push_back(fmt::format("max sequence length {} exceeds the model's context of {} positions "
                                          "(max_position_embeddings): quality past {} is not what it was trained for",
                                          max_seq_len, model_context, model_context));
  }
  // CUDA engines run fp16/bf16 (tensor cores, half the bytes); a float32 checkpoint becomes fp16.
  DType source_dtype = imported.source_dtype;
  if (options.backend == "cuda" && source_dtype == DType::F32) source_dtype = DType::F16;
  KILN_ASSIGN(const DType dtype, parse_dtype(options.dtype, source_dtype));
  if (options.backend == "cuda" && dtype == DType::F32) {
    return make_error("--dtype fp32 is not supported by the cuda backend: use fp16 or bf16");
  }
  std::string device_arch = options.device_arch;
  if (options.backend == "cuda" && device_arch.empty()) {
    auto present = cuda_device_arch();
    device_arch = present.ok() ? *present : "sm_90";
  }
  if (options.backend == "cpu") device_arch = "x86_64";
  KILN_ASSIGN(const std::optional<KvCacheDtype> kv_cache, choose_kv_cache(options.kv_cache, options.backend, dtype));
  report.kv_cache = kv_cache ? std::string(kv_cache_dtype_name(*kv_cache)) : "activation dtype";

  const nlohmann::json checkpoint_quant = imported.checkpoint_quant;
  KILN_ASSIGN(BuiltModel built, build_llama_graph(config, imported.tensors, std::move(imported.quantized)));
  KILN_TRY(convert_precision(built.graph, built.weights, dtype));
  if (!checkpoint_quant.is_null()) {
    report.quant = "checkpoint " + checkpoint_quant["description"].get<std::string>();
    report.quant_notes = imported.checkpoint_quant_notes;
  }
  if (options.fuse) {
    KILN_ASSIGN(report.fused_qkv, fuse_qkv(built.graph, built.weights));
    KILN_ASSIGN(report.fused_gate_up, fuse_gate_up(built.graph, built.weights));
    KILN_ASSIGN(report.fused_add_rms_norm, fuse_add_rms_norm(built.graph));
    KILN_ASSIGN(report.fused_rope, fuse_rope_into_attention(built.graph));
    KILN_ASSIGN(report.fused_swiglu_linear, fuse_swiglu_into_linear(built.graph));
  }

  // Tokenizer: stored verbatim so the run side parses exactly what the build side saw.
  std::optional<Tokenizer> tokenizer;
  const std::string tokenizer_path = options.tokenizer_path.empty() ? imported.default_tokenizer : options.tokenizer_path;
  if (options.tokenizer_path.empty() && imported.embedded_tokenizer) {
    auto embedded = Tokenizer::from_bytes(imported.embedded_tokenizer->first, imported.embedded_tokenizer->second);
    if (!embedded.ok()) return embedded.error().with_context(options.model_path + ": the tokenizer rebuilt from tokenizer.ggml.*");
    tokenizer = std::move(*embedded);
    if (tokenizer->vocab_size() > config.vocab_size) {
      return make_error("{}: the tokenizer has {} tokens but the model's vocabulary is {}", options.model_path,
                        tokenizer->vocab_size(), config.vocab_size);
    }
    report.tokenizer = options.model_path + " (tokenizer.ggml.*)";
  } else if (!tokenizer_path.empty()) {
    KILN_ASSIGN(tokenizer, Tokenizer::from_file(tokenizer_path));
    if (tokenizer->vocab_size() > config.vocab_size) {
      return make_error("tokenizer {} has {} tokens but the model's vocabulary is {}", tokenizer_path,
                        tokenizer->vocab_size(), config.vocab_size);
    }
    report.tokenizer = tokenizer_path;
  }

  // Quantization (after fusion: a fused qkv / gate_up shares one input and so one set of AWQ scales).
  nlohmann::json quant_metadata = nullptr;
  if (options.quant == "fp8") {
    if (options.backend != "cuda") {
      return make_error("--quant fp8 runs on CUDA GPUs with FP8 tensor cores (Hopper and later); the cpu backend has "
                        "no fp8 kernels: use --quant int8 or w8a8");
    }
    return make_error("--quant fp8 is not implemented yet (FP8 checkpoints are read and dequantized; see "
                      "docs/QUANTIZATION.md): use --quant int8 or int4");
  }
  if (options.quant != "none") {
    QuantizeModelOptions q;
    q.mode = options.quant;
    q.group_size = options.group_size;
    q.calib_path = options.calib_path;
    q.calib_samples = options.calib_samples;
    q.calib_method = options.calib_method;
    q.calib_cache = options.calib_cache;
    q.calib_seq_len = std::min(options.calib_seq_len, max_seq_len);
    q.keep = options.keep_fp16;
    q.gptq = options.gptq;
    q.max_error = options.max_quant_error;
    q.tokenizer = tokenizer ? &*tokenizer : nullptr;
    KILN_ASSIGN(QuantizeModelReport quant, quantize_model(built.graph, built.weights, q));
    report.quant = report.quant.empty() ? quant.summary : report.quant + "; " + quant.summary;
    report.quant_notes.insert(report.quant_notes.end(), quant.notes.begin(), quant.notes.end());
    quant_metadata = quant.metadata;
  }
  if ((!checkpoint_quant.is_null() || options.quant != "none") && options.backend == "cpu" && dtype == DType::F32 &&
      options.dtype == "auto") {
    report.quant_notes.push_back(
        "the quantized matrices prefill in f32 (exact); --dtype bf16 prefills ~2.7x faster on CPUs with AVX512_BF16 "
        "(perplexity +0.01% on SmolLM2 Q4_0: docs/QUANTIZATION.md)");
  }

  // Tactics: on the GPU the engine is built for, time GEMV vs cuBLASLt algorithms for every Linear
  // shape at each decode bucket (1, 2, 4, ... max batch) and the opt prefill step; the run side uses
  // the winners. Without that GPU the run side keeps its heuristics.
  nlohmann::json tactics = nullptr;
  report.tactics = "none (not a cuda engine)";
  if (options.backend == "cuda") {
    auto present = cuda_device_arch();
    if (!options.tune) {
      report.tactics = "none (--no-tune)";
    } else if (!present.ok() || *present != device_arch) {
      report.tactics = "none (no " + device_arch + " GPU at build time: kernels chosen by heuristics at load)";
    } else {
      std::vector<int64_t> rows;
      for (int64_t m = 1; m <= profile.max_batch; m *= 2) rows.push_back(m);
      rows.push_back(std::min<int64_t>(profile.opt_seq * profile.opt_batch, 2048));
      KILN_ASSIGN(tactics, cuda_select_tactics(built.graph, rows));
      report.tactics = fmt::format("{} timed on {}", tactics["linear"].size(), device_arch);
    }
  }

  nlohmann::json chat_template_metadata = nullptr;
  if (!chat_template.source.empty()) {
    // Without a tokenizer_config.json (llama2.c checkpoints) the special tokens are the tokenizer's.
    if (!chat_template.has_tokenizer_config && tokenizer) {
      chat_template.bos_token = special_token_text(*tokenizer, tokenizer->bos_id());
      chat_template.eos_token = special_token_text(*tokenizer, tokenizer->eos_id());
    }
    chat_template_metadata = {{"template", chat_template.source},
                              {"bos_token", chat_template.bos_token},
                              {"eos_token", chat_template.eos_token},
                              {"source", chat_template.origin}};
    report.chat_template = chat_template.origin;
  }

  EngineWriteSpec spec;
  spec.backend = options.backend;
  spec.device_arch = device_arch;
  std::vector<int32_t> eos;
  for (int64_t e : config.eos_token_ids) eos.push_back(static_cast<int32_t>(e));
  int64_t bos = config.bos_token_id;
  if (tokenizer && bos < 0) bos = tokenizer->bos_id();
  if (tokenizer && eos.empty() && tokenizer->eos_id() >= 0) eos.push_back(tokenizer->eos_id());
  spec.metadata = {
      {"model",
       {{"architecture", config.architecture},
        {"vocab_size", config.vocab_size},
        {"hidden_size", config.hidden_size},
        {"num_layers", config.num_layers},
        {"num_heads", config.num_heads},
        {"num_kv_heads", config.num_kv_heads},
        {"head_dim", config.head_dim},
        {"bos_token_id", bos},
        {"eos_token_ids", eos},
        {"source", options.model_path}}},
      {"profile",
       {{"max_seq_len", max_seq_len},
        {"max_batch", profile.max_batch},
        {"batch", {profile.min_batch, profile.opt_batch, profile.max_batch}},
        {"seq", {profile.min_seq, profile.opt_seq, profile.max_seq}}}},
      {"build",
       {{"dtype", std::string(dtype_name(dtype))},
        {"fuse", options.fuse},
        {"fused_qkv", report.fused_qkv},
        {"fused_gate_up", report.fused_gate_up},
        {"fused_add_rms_norm", report.fused_add_rms_norm},
        {"fused_rope_into_attention", report.fused_rope},
        {"fused_swiglu_into_linear", report.fused_swiglu_linear},
        {"quant", quant_metadata},
        {"checkpoint_quant", checkpoint_quant},
        {"kiln_version", KILN_VERSION}}},
      {"graph", built.graph.to_json()},
      {"tactics", tactics},
      {"tokenizer", nullptr},
  };
  // The KV cache element type the run side allocates (backend/kv_cache_dtype.h); fp32 and the cuda
  // default write nothing, so such engines read as before.
  if (kv_cache && *kv_cache != KvCacheDtype::Fp32) spec.metadata["build"]["kv_cache"] = kv_cache_metadata(*kv_cache);
  for (const auto& [name, info] : built.graph.weights) {
    for (const StoredTensor& part : stored_tensors(name, info)) {
      const TensorView* t = built.weights.find(part.name);
      if (!t) return make_error("internal: weight '{}' missing after passes", part.name);
      if (t->dtype != part.dtype || t->shape != part.shape) {
        return make_error("internal: weight '{}' disagrees with the graph after passes", part.name);
      }
      spec.tensors.push_back(EngineTensorSource{part.name, t->dtype, t->shape, t->data, t->nbytes});
      report.weight_bytes += static_cast<int64_t>(t->nbytes);
    }
  }
  report.num_tensors = static_cast<int64_t>(spec.tensors.size());
  if (tokenizer) {
    const std::string& bytes = tokenizer->source_bytes();
    spec.metadata["tokenizer"] = {{"source", tokenizer_source_name(tokenizer->source())}, {"tensor", "tokenizer.file"}};
    spec.tensors.push_back(EngineTensorSource{"tokenizer.file", DType::U8, {static_cast<int64_t>(bytes.size())},
                                              bytes.data(), bytes.size()});
  }
  spec.metadata["chat_template"] = std::move(chat_template_metadata);
  KILN_TRY(write_engine(options.output_path, spec));
  return report;
}

}  // namespace kiln
