#include "backend/kv_cache_dtype.h"

namespace kiln {

std::string_view kv_cache_dtype_name(KvCacheDtype dtype) {
  switch (dtype) {
    case KvCacheDtype::Fp32: return "fp32";
    case KvCacheDtype::Fp16: return "fp16";
    case KvCacheDtype::Int8: return "int8";
  }
  return "?";
}

nlohmann::json kv_cache_metadata(KvCacheDtype dtype) {
  switch (dtype) {
    case KvCacheDtype::Fp32: return nullptr;
    case KvCacheDtype::Fp16: return {{"dtype", "fp16"}};
    case KvCacheDtype::Int8: return {{"dtype", "int8"}, {"scales", "per_token_head"}};
  }
  return nullptr;
}

Result<std::optional<KvCacheDtype>> engine_kv_cache_dtype(const nlohmann::json& metadata) {
  const auto build = metadata.find("build");
  if (build == metadata.end() || !build->is_object()) return std::optional<KvCacheDtype>();
  const auto kv = build->find("kv_cache");
  if (kv == build->end() || kv->is_null()) return std::optional<KvCacheDtype>();
  const auto field = [&](const char* name) -> std::string {
    if (!kv->is_object()) return "";
    const auto it = kv->find(name);
    return it != kv->end() && it->is_string() ? it->get<std::string>() : "";
  };
  const std::string dtype = field("dtype");
  // The object must hold exactly what this kiln writes, so that a field added by a later kiln
  // (which would change what the cache holds) is refused, not ignored.
  const size_t fields = kv->is_object() ? kv->size() : 0;
  if ((dtype == "fp32" || dtype == "fp16") && fields == 1) {
    return std::optional<KvCacheDtype>(dtype == "fp32" ? KvCacheDtype::Fp32 : KvCacheDtype::Fp16);
  }
  if (dtype == "int8" && field("scales") == "per_token_head" && fields == 2) {
    return std::optional<KvCacheDtype>(KvCacheDtype::Int8);
  }
  return make_error("engine metadata: build.kv_cache {} is not a KV cache this kiln knows (fp32, fp16, or int8 with "
                    "per_token_head scales): rebuild the engine with this kiln",
                    kv->dump());
}

int64_t kv_cache_bytes_per_token(KvCacheDtype dtype, int64_t num_layers, int64_t num_kv_heads, int64_t head_dim) {
  const int64_t row = dtype == KvCacheDtype::Fp32   ? 4 * head_dim
                      : dtype == KvCacheDtype::Fp16 ? 2 * head_dim
                                                    : head_dim + 4;
  return 2 * num_layers * num_kv_heads * row;
}

}  // namespace kiln
