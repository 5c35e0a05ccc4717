// engine_kv_cache_dtype (backend/kv_cache_dtype.h): what builds write reads back, absent means the
// backend's default, and anything else is one error line naming the entry.
#include <gtest/gtest.h>

#include "backend/kv_cache_dtype.h"

namespace kiln {
namespace {

nlohmann::json with_kv_cache(const nlohmann::json& kv_cache) {
  return {{"build", {{"dtype", "BF16"}, {"kv_cache", kv_cache}}}};
}

TEST(KvCacheDtype, ReadsWhatBuildsWrite) {
  for (KvCacheDtype dtype : {KvCacheDtype::Fp16, KvCacheDtype::Int8}) {
    auto read = engine_kv_cache_dtype(with_kv_cache(kv_cache_metadata(dtype)));
    ASSERT_TRUE(read.ok()) << read.error().message;
    EXPECT_EQ(*read, dtype) << kv_cache_dtype_name(dtype);
  }
  EXPECT_TRUE(kv_cache_metadata(KvCacheDtype::Fp32).is_null());  // fp32 writes nothing...
  auto fp32 = engine_kv_cache_dtype(with_kv_cache({{"dtype", "fp32"}}));  // ...but is read when written
  ASSERT_TRUE(fp32.ok());
  EXPECT_EQ(*fp32, KvCacheDtype::Fp32);
}

TEST(KvCacheDtype, AbsentIsTheBackendDefault) {
  for (const nlohmann::json& metadata : {nlohmann::json::object(), nlohmann::json{{"build", {{"dtype", "F32"}}}},
                                         with_kv_cache(nullptr)}) {
    auto read = engine_kv_cache_dtype(metadata);
    ASSERT_TRUE(read.ok()) << metadata.dump();
    EXPECT_FALSE(read->has_value()) << metadata.dump();
  }
}

TEST(KvCacheDtype, AnythingElseIsOneErrorLine) {
  for (const nlohmann::json& entry :
       {nlohmann::json{{"dtype", "fp8"}}, nlohmann::json{{"dtype", "int8"}},  // int8 without its scales
        nlohmann::json{{"dtype", "int8"}, {"scales", "per_tensor"}}, nlohmann::json{{"dtype", "fp16"}, {"layout", "nhd"}},
        nlohmann::json{{"dtype", 16}}, nlohmann::json("fp16"), nlohmann::json::array()}) {
    auto read = engine_kv_cache_dtype(with_kv_cache(entry));
    ASSERT_FALSE(read.ok()) << entry.dump();
    EXPECT_EQ(read.error().message, "engine metadata: build.kv_cache " + entry.dump() +
                                        " is not a KV cache this kiln knows (fp32, fp16, or int8 with per_token_head "
                                        "scales): rebuild the engine with this kiln");
  }
}

TEST(KvCacheDtype, BytesPerToken) {
  // SmolLM2-135M: 30 layers, 3 kv heads, head_dim 64.
  EXPECT_EQ(kv_cache_bytes_per_token(KvCacheDtype::Fp32, 30, 3, 64), 46080);
  EXPECT_EQ(kv_cache_bytes_per_token(KvCacheDtype::Fp16, 30, 3, 64), 23040);
  EXPECT_EQ(kv_cache_bytes_per_token(KvCacheDtype::Int8, 30, 3, 64), 12240);
}

}  // namespace
}  // namespace kiln
