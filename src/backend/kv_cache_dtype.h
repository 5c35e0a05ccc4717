// The element type of an engine's paged KV cache. Chosen at `kiln build` (--kv-cache) and recorded in
// the engine metadata as build.kv_cache (docs/ENGINE_FORMAT.md), so that every run of the engine
// allocates the same cache whatever the run side's defaults:
//   absent or null                                   the backend's default: cpu fp32, cuda the activation dtype
//   {"dtype": "fp16"}                                IEEE half (cpu; cuda when the activations are fp16)
//   {"dtype": "int8", "scales": "per_token_head"}    int8 codes + an f32 scale per (token, kv head) (cpu)
// Builds record nothing for fp32, which every kiln reads as fp32. The CPU layouts: backend/cpu/README.md.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include <nlohmann/json.hpp>

#include "common/error.h"

namespace kiln {

enum class KvCacheDtype : uint8_t { Fp32, Fp16, Int8 };

// "fp32", "fp16", "int8": the metadata's and the CLI's spelling.
std::string_view kv_cache_dtype_name(KvCacheDtype dtype);

// build.kv_cache for an engine that asks for `dtype`: null for fp32 (nothing is written), else the object.
nlohmann::json kv_cache_metadata(KvCacheDtype dtype);

// What an engine's metadata asks for: nullopt when build.kv_cache is absent or null (older engines,
// fp32 on the cpu, the activation dtype on cuda). Anything else this kiln does not know (another dtype,
// int8 without per_token_head scales, not an object) is one error line naming the entry.
Result<std::optional<KvCacheDtype>> engine_kv_cache_dtype(const nlohmann::json& metadata);

// Bytes of K and V together for one token over all layers: per (token, kv head) row of K or of V,
// 4 head_dim (fp32), 2 head_dim (fp16), head_dim codes + a 4-byte scale (int8).
int64_t kv_cache_bytes_per_token(KvCacheDtype dtype, int64_t num_layers, int64_t num_kv_heads, int64_t head_dim);

}  // namespace kiln
