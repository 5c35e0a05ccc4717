#include "runtime/model.h"

#include "backend/kv_cache_dtype.h"

namespace kiln {

Result<std::optional<Tokenizer>> tokenizer_from_engine(const LoadedEngine& engine) {
  const auto& meta = engine.metadata;
  if (!meta.contains("tokenizer") || meta["tokenizer"].is_null()) return std::optional<Tokenizer>();
  try {
    const std::string source = meta["tokenizer"].at("source").get<std::string>();
    const std::string tensor = meta["tokenizer"].at("tensor").get<std::string>();
    const TensorView* t = engine.find(tensor);
    if (!t) return make_error("engine: tokenizer tensor '{}' missing", tensor);
    TokenizerSource kind;
    if (source == "hf_json") kind = TokenizerSource::HfJson;
    else if (source == "sentencepiece") kind = TokenizerSource::SentencePieceModel;
    else if (source == "llama2c") kind = TokenizerSource::Llama2cBin;
    else if (source == "llama_cpp_spm") kind = TokenizerSource::LlamaCppSpm;
    else return make_error("engine: unknown tokenizer source '{}'", source);
    KILN_ASSIGN(Tokenizer tok, Tokenizer::from_bytes(kind, std::string(reinterpret_cast<const char*>(t->data), t->nbytes)));
    return std::optional<Tokenizer>(std::move(tok));
  } catch (const nlohmann::json::exception& e) {
    return make_error("engine metadata: malformed tokenizer entry: {}", e.what());
  }
}

Result<std::optional<ChatTemplate>> chat_template_from_engine(const LoadedEngine& engine) {
  const auto& meta = engine.metadata;
  if (!meta.contains("chat_template") || meta["chat_template"].is_null()) return std::optional<ChatTemplate>();
  try {
    const auto& entry = meta["chat_template"];
    auto parsed = ChatTemplate::parse(entry.at("template").get<std::string>(), entry.at("bos_token").get<std::string>(),
                                      entry.at("eos_token").get<std::string>());
    if (!parsed.ok()) return parsed.error().with_context("engine chat template");
    return std::optional<ChatTemplate>(std::move(parsed).value());
  } catch (const nlohmann::json::exception& e) {
    return make_error("engine metadata: malformed chat_template entry: {}", e.what());
  }
}

Result<std::unique_ptr<Model>> Model::load(const std::string& engine_path, const RuntimeOptions& options) {
  std::unique_ptr<Model> model(new Model());
  LoadOptions load_options;
  load_options.expected_backend = options.backend;
  load_options.verify_checksum = options.verify_checksum;
  KILN_ASSIGN(model->engine_, load_engine(engine_path, load_options));
  const auto& meta = model->engine_.metadata;
  try {
    const auto& m = meta.at("model");
    model->info_.architecture = m.at("architecture").get<std::string>();
    model->info_.vocab_size = m.at("vocab_size").get<int64_t>();
    model->info_.bos_token_id = m.at("bos_token_id").get<int32_t>();
    model->info_.eos_token_ids = m.at("eos_token_ids").get<std::vector<int32_t>>();
    model->info_.max_seq_len = meta.at("profile").at("max_seq_len").get<int64_t>();
    model->info_.max_batch = meta.at("profile").at("max_batch").get<int64_t>();
  } catch (const nlohmann::json::exception& e) {
    return make_error("{}: engine metadata malformed: {}", engine_path, e.what());
  }
  const std::string backend_name = model->engine_.header.backend;
  Result<std::unique_ptr<Backend>> backend = make_error("engine backend '{}' is unknown to this kiln", backend_name);
  if (backend_name == "cpu") {
    backend = create_cpu_backend(model->engine_, options.backend_options);
  } else if (backend_name == "cuda") {
    // The CUDA kernels keep the KV cache in the activation dtype: refuse engines that ask for another
    // (--kv-cache int8, or fp16 on a bf16 engine) here, before any device work, rather than misread
    // their cache.
    auto kv = engine_kv_cache_dtype(meta);
    if (!kv.ok()) return kv.error().with_context(engine_path);
    const auto build = meta.find("build");
    const bool fp16_engine = build != meta.end() && build->is_object() && build->contains("dtype") &&
                             build->at("dtype") == "F16";
    if (kv->has_value() && !(**kv == KvCacheDtype::Fp16 && fp16_engine)) {
      return make_error("{}: engine has a {} KV cache, which the cuda backend does not support yet: rebuild with "
                        "--kv-cache auto",
                        engine_path, kv_cache_dtype_name(**kv));
    }
    // An engine is tuned for one GPU architecture: refuse others, naming both.
    auto arch = cuda_device_arch();
    if (!arch.ok()) return arch.error().with_context(engine_path + ": engine built for cuda");
    const std::string built_for = model->engine_.header.device_arch;
    if (built_for != *arch) {
      return make_error("{}: engine built for {}, this GPU is {}: rebuild the engine on this GPU", engine_path, built_for, *arch);
    }
    backend = create_cuda_backend(model->engine_, options.backend_options);
  }
  if (!backend.ok()) return backend.error().with_context(engine_path);
  model->backend_ = std::move(backend).value();
  KILN_ASSIGN(model->tokenizer_, tokenizer_from_engine(model->engine_));
  {
    auto chat_template = chat_template_from_engine(model->engine_);
    if (!chat_template.ok()) return chat_template.error().with_context(engine_path);
    model->chat_template_ = std::move(chat_template).value();
  }
  model->kv_pool_ = std::make_unique<KvBlockPool>(model->backend_->kv_geometry().num_blocks);
  return model;
}

}  // namespace kiln
