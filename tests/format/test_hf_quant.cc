// format/hf_quant: pre-quantized HF checkpoints (AWQ GEMM, GPTQ v1 / v2, FP8, compressed-tensors fp8).
//   - unpacking gives exactly the codes, scales and zeros tools/make_quantized_fixtures.py packed
//     (its reference.safetensors holds them for layer 0; the packing itself was checked against
//     AutoAWQ's and AutoGPTQ's own code by the tool's --check);
//   - an act-order GPTQ matrix is re-quantized within half an int8 step of its exact values, fp8
//     weights dequantize exactly to the checkpoint's values;
//   - corrupt configs, wrong shapes, wrong dtypes, missing tensors: one clear error each.
#include "format/hf_quant.h"

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>

#include <gtest/gtest.h>

#include "format/safetensors.h"

namespace kiln {
namespace {

std::string fixture(const std::string& name) { return std::string(KILN_SOURCE_DIR) + "/tests/fixtures/hf-quant/" + name; }

struct Fixture {
  HfQuantConfig config;
  WeightSet weights;
  SafetensorsFile reference;
  std::map<std::string, const TensorView*> ref;
};

std::unique_ptr<Fixture> open_fixture(const std::string& name) {
  auto f = std::make_unique<Fixture>();
  auto config = read_hf_quant_config(fixture(name));
  EXPECT_TRUE(config.ok() && config->has_value()) << (config.ok() ? "no quantization_config" : config.error().message);
  if (!config.ok() || !config->has_value()) return nullptr;
  f->config = **config;
  auto weights = open_safetensors_dir(fixture(name));
  auto reference = open_safetensors(fixture(name) + "/reference.safetensors");
  EXPECT_TRUE(weights.ok() && reference.ok());
  if (!weights.ok() || !reference.ok()) return nullptr;
  f->weights = std::move(*weights);
  f->reference = std::move(*reference);
  for (const TensorView& t : f->reference.tensors) f->ref[t.name] = &t;
  return f;
}

float f32_at(const TensorView& t, int64_t i) {
  float v;
  std::memcpy(&v, t.data + 4 * i, 4);
  return v;
}

const char* kLayer0[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                         "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};

// Layer 0 of an awq / gptq fixture against the packer's logical values.
void expect_int4_exact(const std::string& name, int64_t expected_requantized) {
  SCOPED_TRACE(name);
  auto f = open_fixture(name);
  ASSERT_TRUE(f);
  auto unpacked = unpack_hf_quantized(f->config, f->weights.tensors);
  ASSERT_TRUE(unpacked.ok()) << unpacked.error().message;
  EXPECT_EQ(unpacked->requantized, expected_requantized);
  EXPECT_TRUE(unpacked->dequantized.empty());
  int exact = 0, requantized = 0;
  for (const char* proj : kLayer0) {
    const std::string module = std::string("model.layers.0.") + proj;
    SCOPED_TRACE(module);
    auto it = unpacked->quantized.find(module + ".weight");
    ASSERT_NE(it, unpacked->quantized.end());
    const QuantizedMatrix& m = it->second;
    const QuantMatrixView v = m.view();
    if (f->ref.count(module + ".q")) {
      const TensorView& q = *f->ref[module + ".q"];
      const TensorView& scale = *f->ref[module + ".scale"];
      const TensorView& zero = *f->ref[module + ".zero"];
      ASSERT_EQ(q.shape, (std::vector<int64_t>{m.rows, m.cols}));
      const int64_t groups = scale.shape[1];
      EXPECT_EQ(m.info.bits, 4);
      EXPECT_EQ(m.info.scale_dtype, DType::F32);
      EXPECT_TRUE(m.info.has_min);
      EXPECT_EQ(quant_groups(m.info, m.cols), groups);
      for (int64_t n = 0; n < m.rows; ++n) {
        for (int64_t k = 0; k < m.cols; ++k) ASSERT_EQ(quant_code(v, n, k), q.data[n * m.cols + k]) << n << "," << k;
        for (int64_t g = 0; g < groups; ++g) {
          const float s = f32_at(scale, n * groups + g), z = f32_at(zero, n * groups + g);
          ASSERT_EQ(quant_scale(v, n, g), s) << n << "," << g;
          ASSERT_EQ(quant_min(v, n, g), -s * z) << n << "," << g;
        }
      }
      ++exact;
    } else {
      // Interleaved g_idx: int8 g32 within half a step (range / 255 / 2) of the exact values.
      const TensorView& w = *f->ref.at(module + ".dequant");
      EXPECT_EQ(m.info.bits, 8);
      EXPECT_EQ(m.info.group_size, 32);
      std::vector<float> row(m.cols);
      for (int64_t n = 0; n < m.rows; ++n) {
        dequantize_row(v, n, row.data());
        for (int64_t g = 0; g * 32 < m.cols; ++g) {
          float lo = 0, hi = 0;
          for (int64_t k = g * 32; k < std::min(m.cols, g * 32 + 32); ++k) {
            lo = std::min(lo, f32_at(w, n * m.cols + k)), hi = std::max(hi, f32_at(w, n * m.cols + k));
          }
          for (int64_t k = g * 32; k < std::min(m.cols, g * 32 + 32); ++k) {
            ASSERT_LE(std::abs(row[k] - f32_at(w, n * m.cols + k)), (hi - lo) / 510 * 1.001 + 1e-7) << n << "," << k;
          }
        }
      }
      ++requantized;
    }
  }
  EXPECT_GT(exact + requantized, 0);
  // Every packed part was consumed; nothing of a module is left to the float path.
  for (const std::string& name_consumed : unpacked->consumed) EXPECT_TRUE(f->weights.tensors.count(name_consumed));
  if (expected_requantized > 0) {
    EXPECT_GT(requantized, 0);
    ASSERT_EQ(unpacked->notes.size(), 1u);
    EXPECT_NE(unpacked->notes[0].find("re-quantized to int8 g32"), std::string::npos) << unpacked->notes[0];
  }
}

TEST(HfQuant, AwqUnpacksExactly) {
  expect_int4_exact("llama-awq", 0);
  expect_int4_exact("qwen2-awq", 0);
}

TEST(HfQuant, GptqUnpacksExactly) {
  expect_int4_exact("llama-gptq", 0);       // sym, g128: K = 64 one partial group, K = 192 two groups
  expect_int4_exact("qwen2-gptq-asym", 0);  // asym (v1 zeros 1..16), g64: K = 160 three groups, the last partial
}

TEST(HfQuant, GptqActOrderIsRequantizedWithinHalfAStep) {
  // llama: group 32 and K = 64 / 192: every matrix interleaves; qwen2 (gptq_v2 zeros): group 64, only
  // down_proj (K = 160) has more than one group, the K = 64 matrices stay exact int4.
  expect_int4_exact("llama-gptq-act", 14);
  expect_int4_exact("qwen2-gptq-act-v2", 2);
}

TEST(HfQuant, Fp8DequantizesExactly) {
  for (const char* name : {"llama-fp8", "qwen2-fp8-block", "llama-ct-fp8", "qwen2-ct-fp8-block"}) {
    SCOPED_TRACE(name);
    auto f = open_fixture(name);
    ASSERT_TRUE(f);
    auto unpacked = unpack_hf_quantized(f->config, f->weights.tensors);
    ASSERT_TRUE(unpacked.ok()) << unpacked.error().message;
    EXPECT_TRUE(unpacked->quantized.empty());
    EXPECT_EQ(unpacked->dequantized.size(), 14u);
    for (const char* proj : kLayer0) {
      const std::string module = std::string("model.layers.0.") + proj;
      const TensorView& got = unpacked->dequantized.at(module + ".weight");
      const TensorView& want = *f->ref.at(module + ".dequant");
      ASSERT_EQ(got.dtype, DType::F32);
      ASSERT_EQ(got.shape, want.shape);
      ASSERT_EQ(got.nbytes, want.nbytes);
      EXPECT_EQ(std::memcmp(got.data, want.data, got.nbytes), 0) << module;
    }
  }
}

TEST(HfQuant, E4m3Values) {
  EXPECT_EQ(f8e4m3_to_f32(0x38), 1.0f);
  EXPECT_EQ(f8e4m3_to_f32(0x7e), 448.0f);
  EXPECT_EQ(f8e4m3_to_f32(0xfe), -448.0f);
  EXPECT_EQ(f8e4m3_to_f32(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
  EXPECT_EQ(f8e4m3_to_f32(0x08), std::ldexp(1.0f, -6));  // smallest normal
  EXPECT_EQ(f8e4m3_to_f32(0x3b), 1.375f);
  EXPECT_TRUE(std::isnan(f8e4m3_to_f32(0x7f)));
  EXPECT_TRUE(std::isnan(f8e4m3_to_f32(0xff)));
  EXPECT_EQ(f8e4m3_to_f32(0x80), 0.0f);
}

TEST(HfQuant, ConfigDescriptions) {
  const auto describe = [](const std::string& name) {
    auto c = read_hf_quant_config(fixture(name));
    return c.ok() && c->has_value() ? (*c)->description : std::string("?");
  };
  EXPECT_EQ(describe("llama-awq"), "awq gemm int4 g64");
  EXPECT_EQ(describe("qwen2-gptq-asym"), "gptq int4 g64 asym (v1 zeros)");
  EXPECT_EQ(describe("qwen2-gptq-act-v2"), "gptq int4 g64 asym desc_act (v2 zeros)");
  EXPECT_EQ(describe("llama-fp8"), "fp8 e4m3 per-tensor");
  EXPECT_EQ(describe("qwen2-fp8-block"), "fp8 e4m3 block 32x64");
  EXPECT_EQ(describe("llama-ct-fp8"), "compressed-tensors fp8 e4m3 per-channel");
  auto none = parse_hf_quant_config(R"({"architectures": ["LlamaForCausalLM"]})", "config.json");
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
}

// ---- configs: one clear error each ----

std::string config_error(const std::string& quantization_config) {
  auto r = parse_hf_quant_config(R"({"model_type": "llama", "quantization_config": )" + quantization_config + "}",
                                 "m/config.json");
  if (r.ok()) return "(accepted)";
  EXPECT_EQ(r.error().message.find('\n'), std::string::npos) << r.error().message;
  return r.error().message;
}

void expect_config_error(const std::string& quantization_config, std::vector<std::string> parts) {
  const std::string m = config_error(quantization_config);
  parts.insert(parts.begin(), "m/config.json: quantization_config");
  for (const std::string& p : parts) EXPECT_NE(m.find(p), std::string::npos) << "'" << p << "' not in: " << m;
}

TEST(HfQuant, RefusesBadConfigs) {
  expect_config_error(R"("awq")", {"expected an object"});
  expect_config_error(R"({"bits": 4})", {"missing required field 'quant_method'", "awq"});
  expect_config_error(R"({"quant_method": "bitsandbytes", "load_in_4bit": true})",
                      {"quant_method \"bitsandbytes\" is not supported", "awq (version gemm", "gptq (4 bits",
                       "compressed-tensors"});
  expect_config_error(R"({"quant_method": "exl2"})", {"quant_method \"exl2\""});
  expect_config_error(R"({"quant_method": "awq", "bits": 8, "group_size": 128})", {"'bits' 8 is not supported"});
  expect_config_error(R"({"quant_method": "awq", "group_size": 128})", {"missing required field 'bits'"});
  expect_config_error(R"({"quant_method": "awq", "bits": 4, "group_size": 0})", {"'group_size': expected -1 or a positive"});
  expect_config_error(R"({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemv"})",
                      {"'version' \"gemv\" is not supported"});
  expect_config_error(R"({"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": false})",
                      {"'zero_point' false"});
  expect_config_error(R"({"quant_method": "awq", "bits": 4, "group_size": 128, "backend": "llm-awq"})",
                      {"'backend' \"llm-awq\""});
  expect_config_error(R"({"quant_method": "gptq", "bits": 8, "group_size": 128})", {"'bits' 8 is not supported", "gptq"});
  expect_config_error(R"({"quant_method": "gptq", "bits": 4, "group_size": "128"})", {"'group_size': expected an integer"});
  expect_config_error(R"({"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": "yes"})",
                      {"'desc_act': expected true or false"});
  expect_config_error(R"({"quant_method": "gptq", "bits": 4, "group_size": 128, "checkpoint_format": "marlin"})",
                      {"'checkpoint_format' \"marlin\" is not supported"});
  expect_config_error(R"({"quant_method": "fp8", "fmt": "e5m2"})", {"'fmt' \"e5m2\" is not supported"});
  expect_config_error(R"({"quant_method": "fp8", "weight_block_size": [128]})", {"'weight_block_size': expected [rows, columns]"});
  expect_config_error(R"({"quant_method": "fp8", "activation_scheme": "per-token"})", {"'activation_scheme'"});
  const std::string group = R"("config_groups": {"g": {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "float", "strategy": "tensor"}}})";
  expect_config_error(R"({"quant_method": "compressed-tensors", "format": "pack-quantized", )" + group + "}",
                      {"'format' \"pack-quantized\" is not supported"});
  expect_config_error(R"({"quant_method": "compressed-tensors", "format": "float-quantized"})",
                      {"'config_groups': expected an object with exactly one quantization group"});
  expect_config_error(R"({"quant_method": "compressed-tensors", "format": "float-quantized", "config_groups": {"g": {"weights": {"num_bits": 4, "type": "int", "strategy": "group"}}}})",
                      {"config_groups.g.weights: weights of 4 bits, type \"int\" are not supported"});
  expect_config_error(R"({"quant_method": "compressed-tensors", "format": "float-quantized", "config_groups": {"g": {"weights": {"num_bits": 8, "type": "float", "strategy": "group", "group_size": 128}}}})",
                      {"'strategy' \"group\" is not supported"});
  expect_config_error(R"({"quant_method": "compressed-tensors", "format": "float-quantized", "config_groups": {"g": {"weights": {"num_bits": 8, "type": "float", "strategy": "block"}}}})",
                      {"strategy block needs 'block_structure'"});
  expect_config_error(R"({"quant_method": "compressed-tensors", "format": "float-quantized", "sparsity_config": {"format": "sparse-24"}, )" + group + "}",
                      {"'sparsity_config' is not supported"});
  // Not JSON at all: the strict parser's error, naming the file.
  auto broken = parse_hf_quant_config("{\"quantization_config\": {", "m/config.json");
  ASSERT_FALSE(broken.ok());
  EXPECT_NE(broken.error().message.find("m/config.json"), std::string::npos) << broken.error().message;
}

// ---- tensors: one clear error each ----

// A fixture's tensors, editable: replacements own their bytes.
struct Tensors {
  std::unique_ptr<Fixture> f;
  std::map<std::string, TensorView> map;
  std::vector<std::shared_ptr<std::vector<uint8_t>>> owned;

  explicit Tensors(const std::string& name) : f(open_fixture(name)) {
    if (f) map = f->weights.tensors;
  }
  // Replaces `name` by a tensor of this dtype / shape holding a copy of (or zeros past) its old bytes.
  void reshape(const std::string& name, DType dtype, std::vector<int64_t> shape) {
    TensorView t = map.at(name);
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    auto bytes = std::make_shared<std::vector<uint8_t>>(n * dtype_size(dtype), 0);
    std::memcpy(bytes->data(), t.data, std::min<uint64_t>(t.nbytes, bytes->size()));
    owned.push_back(bytes);
    t.dtype = dtype, t.shape = std::move(shape), t.data = bytes->data(), t.nbytes = bytes->size(), t.owner = bytes;
    map[name] = t;
  }
  void poke(const std::string& name, int64_t byte, uint8_t value) {
    const TensorView& t = map.at(name);
    reshape(name, t.dtype, t.shape);
    const_cast<uint8_t*>(map.at(name).data)[byte] = value;
  }
  std::string error(const HfQuantConfig* config = nullptr) {
    auto r = unpack_hf_quantized(config ? *config : f->config, map);
    if (r.ok()) return "(accepted)";
    EXPECT_EQ(r.error().message.find('\n'), std::string::npos);
    return r.error().message;
  }
};

void expect_contains(const std::string& m, const std::vector<std::string>& parts) {
  for (const std::string& p : parts) EXPECT_NE(m.find(p), std::string::npos) << "'" << p << "' not in: " << m;
}

const std::string kQ = "model.layers.1.self_attn.q_proj";  // [64, 64]
const std::string kDown = "model.layers.1.mlp.down_proj";  // llama [64, 192]

TEST(HfQuant, RefusesBadAwqTensors) {
  {
    Tensors t("llama-awq");
    ASSERT_TRUE(t.f);
    EXPECT_EQ(t.error(), "(accepted)");
    t.reshape(kQ + ".qweight", DType::F16, {64, 8});
    expect_contains(t.error(), {"tensor '" + kQ + ".qweight'", "expected I32 [K, N / 8], found F16 [64, 8]"});
  }
  {
    Tensors t("llama-awq");
    t.reshape(kQ + ".qzeros", DType::I32, {2, 8});
    expect_contains(t.error(), {"tensor '" + kQ + ".qzeros'", "expected I32 [1, 8]", "found I32 [2, 8]"});
  }
  {
    Tensors t("llama-awq");
    t.reshape(kQ + ".scales", DType::F32, {1, 64});
    expect_contains(t.error(), {"tensor '" + kQ + ".scales'", "expected F16 [1, 64]", "found F32 [1, 64]"});
  }
  {
    Tensors t("llama-awq");
    t.map.erase(kQ + ".qzeros");
    expect_contains(t.error(), {"missing tensor '" + kQ + ".qzeros'"});
  }
  {
    Tensors t("llama-awq");
    t.map.erase(kQ + ".qweight");
    expect_contains(t.error(), {"tensor '" + kQ + ".qzeros': no '" + kQ + ".qweight' beside it"});
  }
  {
    Tensors t("llama-awq");
    t.map[kQ + ".weight"] = t.map.at("model.norm.weight");
    expect_contains(t.error(), {"'" + kQ + ".weight' is also present"});
  }
  {
    Tensors t("llama-awq");  // K = 192 with group 128: AWQ groups must divide K
    HfQuantConfig c = t.f->config;
    c.group_size = 128;
    expect_contains(t.error(&c), {"K = 192 is not a multiple of group_size 128"});
  }
  {
    Tensors t("llama-awq");  // group 16 divides every K but is no kiln int4 group
    HfQuantConfig c = t.f->config;
    c.group_size = 16;
    for (auto& [name, v] : t.f->weights.tensors) {
      if (!name.ends_with(".qzeros") && !name.ends_with(".scales")) continue;
      const int64_t K = t.map.at(name.substr(0, name.rfind('.')) + ".qweight").shape[0];
      t.reshape(name, v.dtype, {K / 16, v.shape[1]});
    }
    expect_contains(t.error(&c), {"awq group_size 16 is not supported", "multiple of 32"});
  }
  {
    Tensors t("llama-awq");
    for (auto it = t.map.begin(); it != t.map.end();) it = it->first.ends_with(".qweight") || it->first.ends_with(".qzeros") || it->first.ends_with(".scales") ? t.map.erase(it) : std::next(it);
    expect_contains(t.error(), {"quantization_config is awq gemm int4 g64 but no tensor ends in '.qweight'"});
  }
}

TEST(HfQuant, RefusesBadGptqTensors) {
  {
    Tensors t("llama-gptq");
    ASSERT_TRUE(t.f);
    EXPECT_EQ(t.error(), "(accepted)");
    t.poke(kDown + ".g_idx", 4 * 5, 7);  // entry 5 -> group 7 of 2
    expect_contains(t.error(), {"tensor '" + kDown + ".g_idx': entry 5 is 7, outside the 2 groups"});
  }
  {
    Tensors t("llama-gptq");
    t.reshape(kDown + ".g_idx", DType::I32, {191});
    expect_contains(t.error(), {"tensor '" + kDown + ".g_idx'", "expected I32 [192]", "found I32 [191]"});
  }
  {
    Tensors t("llama-gptq");
    t.reshape(kDown + ".qzeros", DType::I32, {1, 8});
    expect_contains(t.error(), {"tensor '" + kDown + ".qzeros'", "expected I32 [2, 8] (ceil(K / group_size), N / 8)"});
  }
  {
    Tensors t("llama-gptq");
    t.reshape(kDown + ".qweight", DType::I64, {24, 64});
    expect_contains(t.error(), {"tensor '" + kDown + ".qweight': expected I32 [K / 8, N], found I64 [24, 64]"});
  }
  {
    Tensors t("llama-gptq-act");
    t.map.erase(kDown + ".g_idx");
    expect_contains(t.error(), {"missing tensor '" + kDown + ".g_idx' (desc_act is true)"});
  }
}

TEST(HfQuant, RefusesBadFp8Tensors) {
  {
    Tensors t("qwen2-fp8-block");
    ASSERT_TRUE(t.f);
    EXPECT_EQ(t.error(), "(accepted)");
    t.reshape(kQ + ".weight_scale_inv", DType::F32, {1, 2});
    expect_contains(t.error(), {"tensor '" + kQ + ".weight_scale_inv'", "expected F32 or F16 or BF16 [2, 1]",
                                "ceil(N / 32), ceil(K / 64)", "found F32 [1, 2]"});
  }
  {
    Tensors t("qwen2-fp8-block");
    t.map.erase(kQ + ".weight_scale_inv");
    expect_contains(t.error(), {"missing tensor '" + kQ + ".weight_scale_inv'"});
  }
  {
    Tensors t("qwen2-fp8-block");
    t.poke(kQ + ".weight", 3 * 64 + 5, 0x7f);
    expect_contains(t.error(), {"tensor '" + kQ + ".weight': element [3, 5] is NaN"});
  }
  {
    Tensors t("qwen2-fp8-block");
    const float inf = std::numeric_limits<float>::infinity();
    t.reshape(kQ + ".weight_scale_inv", DType::F32, {2, 1});
    std::memcpy(const_cast<uint8_t*>(t.map.at(kQ + ".weight_scale_inv").data) + 4, &inf, 4);
    expect_contains(t.error(), {"tensor '" + kQ + ".weight_scale_inv': entry 1 is not finite"});
  }
  {
    Tensors t("llama-fp8");  // per-tensor: weight_scale, one value
    ASSERT_TRUE(t.f);
    EXPECT_EQ(t.error(), "(accepted)");
    t.reshape(kQ + ".weight_scale", DType::F32, {2});
    expect_contains(t.error(), {"tensor '" + kQ + ".weight_scale'", "[1] (one scale per tensor)", "found F32 [2]"});
  }
  {
    Tensors t("llama-fp8");
    t.map[kQ + ".weight_scale_inv"] = t.map.at(kQ + ".weight_scale");
    expect_contains(t.error(), {"tensor '" + kQ + ".weight_scale_inv': a fp8 e4m3 per-tensor checkpoint stores scales as '" + kQ + ".weight_scale'"});
  }
  {
    Tensors t("llama-ct-fp8");  // per-channel: [N, 1]
    ASSERT_TRUE(t.f);
    EXPECT_EQ(t.error(), "(accepted)");
    t.reshape(kQ + ".weight_scale", DType::F16, {1, 64});
    expect_contains(t.error(), {"tensor '" + kQ + ".weight_scale'", "[64, 1] (one scale per output row)"});
  }
  {
    Tensors t("llama-ct-fp8");
    t.reshape(kQ + ".weight", DType::F16, {64, 64});
    expect_contains(t.error(), {"tensor '" + kQ + ".weight_scale': its weight '" + kQ + ".weight' is F16 (expected F8_E4M3)"});
  }
  {
    Tensors t("llama-ct-fp8");
    t.map["model.layers.0.mlp.odd"] = t.map.at(kQ + ".weight");
    expect_contains(t.error(), {"tensor 'model.layers.0.mlp.odd': F8_E4M3 outside a '.weight' tensor"});
  }
}

}  // namespace
}  // namespace kiln
