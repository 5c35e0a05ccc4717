// A loaded engine ready to generate: the mapped engine file, its backend, its tokenizer (when the
// engine carries one) and the KV block accounting.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "common/error.h"
#include "engine/engine_file.h"
#include "runtime/kv_block_pool.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace kiln {

struct RuntimeOptions {
  std::string backend;  // empty: the engine's own backend; else the engine must have been built for it
  BackendOptions backend_options;
  bool verify_checksum = true;
};

struct ModelInfo {
  std::string architecture;
  int64_t vocab_size = 0;
  int64_t max_seq_len = 0;
  int64_t max_batch = 0;
  int32_t bos_token_id = -1;
  std::vector<int32_t> eos_token_ids;
};

class Model {
 public:
  static Result<std::unique_ptr<Model>> load(const std::string& engine_path, const RuntimeOptions& options);

  const ModelInfo& info() const { return info_; }
  Backend& backend() { return *backend_; }
  KvBlockPool& kv_pool() { return *kv_pool_; }
  const Tokenizer* tokenizer() const { return tokenizer_ ? &*tokenizer_ : nullptr; }
  // The chat template the engine was built with (nullptr when it has none), parsed once at load.
  const ChatTemplate* chat_template() const { return chat_template_ ? &*chat_template_ : nullptr; }
  const LoadedEngine& engine() const { return engine_; }

 private:
  Model() = default;
  LoadedEngine engine_;                 // declared first: the backend reads weights from its mapping
  std::unique_ptr<Backend> backend_;
  std::optional<Tokenizer> tokenizer_;
  std::optional<ChatTemplate> chat_template_;
  std::unique_ptr<KvBlockPool> kv_pool_;
  ModelInfo info_;
};

// Reads the tokenizer stored in an engine's metadata/tensors (nullopt when it has none).
Result<std::optional<Tokenizer>> tokenizer_from_engine(const LoadedEngine& engine);

// Reads the chat template stored in an engine's metadata (nullopt when it has none).
Result<std::optional<ChatTemplate>> chat_template_from_engine(const LoadedEngine& engine);

}  // namespace kiln
