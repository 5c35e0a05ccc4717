#include "format/hf_quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>

#include <fmt/ranges.h>

#include "common/mapped_file.h"
#include "format/json_util.h"

namespace kiln {
namespace {

using Json = nlohmann::ordered_json;

constexpr const char* kSupported =
    "awq (version gemm, 4 bits, zero_point), gptq (4 bits, checkpoint_format gptq or gptq_v2), fp8 (e4m3, per "
    "tensor or weight_block_size) and compressed-tensors (format float-quantized, fp8 e4m3 weights)";

// AutoAWQ's GEMM packing (awq/modules/linear/gemm.py, WQLinear_GEMM.from_linear): nibble i of a word
// holds column 8 * word + kAwqOrder[i].
constexpr int kAwqOrder[8] = {0, 2, 4, 6, 1, 3, 5, 7};

using Fields = JsonFields;

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

// bits: 4 (the only width kiln reads from awq / gptq); group_size: -1 or positive.
Status parse_int4_fields(const Fields& q, const char* bits_key, const char* group_key, HfQuantConfig* out) {
  KILN_ASSIGN(const std::optional<int64_t> bits, q.optional_int(bits_key));
  if (!bits) return make_error("{}: missing required field '{}'", q.where(), bits_key);
  if (*bits != 4) {
    return make_error("{}: '{}' {} is not supported ({} checkpoints are read with 4 bits)", q.where(), bits_key, *bits,
                      out->quant_method);
  }
  KILN_ASSIGN(const std::optional<int64_t> group, q.optional_int(group_key));
  if (!group) return make_error("{}: missing required field '{}'", q.where(), group_key);
  if (*group != -1 && *group <= 0) return q.type_error(group_key, "-1 or a positive integer");
  out->bits = 4;
  out->group_size = *group;
  return Status::Ok();
}

Status parse_awq(const Fields& q, HfQuantConfig* out) {
  out->method = HfQuantMethod::Awq;
  KILN_TRY(parse_int4_fields(q, q.has("w_bit") ? "w_bit" : "bits", q.has("q_group_size") ? "q_group_size" : "group_size",
                             out));
  KILN_ASSIGN(const std::optional<std::string> version, q.optional_string("version"));
  if (version && lower(*version) != "gemm") {
    return make_error("{}: 'version' \"{}\" is not supported (kiln reads AutoAWQ's GEMM packing, version \"gemm\")",
                      q.where(), *version);
  }
  KILN_ASSIGN(const bool zero_point, q.bool_or("zero_point", true));
  if (!zero_point) return make_error("{}: 'zero_point' false is not supported (AWQ GEMM checkpoints carry qzeros)", q.where());
  KILN_ASSIGN(const std::optional<std::string> backend, q.optional_string("backend"));
  if (backend && *backend != "autoawq") {
    return make_error("{}: 'backend' \"{}\" is not supported (kiln reads AutoAWQ's packing, backend \"autoawq\")",
                      q.where(), *backend);
  }
  out->description = fmt::format("awq gemm int4 {}", out->group_size < 0 ? "per-channel" : fmt::format("g{}", out->group_size));
  return Status::Ok();
}

Status parse_gptq(const Fields& q, HfQuantConfig* out) {
  out->method = HfQuantMethod::Gptq;
  KILN_TRY(parse_int4_fields(q, "bits", "group_size", out));
  KILN_ASSIGN(out->desc_act, q.bool_or("desc_act", false));
  KILN_ASSIGN(out->sym, q.bool_or("sym", true));
  // AutoGPTQ (qlinear_cuda_old.py pack) stores zero - 1 and adds 1 back when unpacking; GPTQModel's
  // gptq_v2 stores the zero itself. "format" is GPTQModel's newer name for the same key.
  out->zero_offset = 1;
  for (const char* key : {"checkpoint_format", "format"}) {
    KILN_ASSIGN(const std::optional<std::string> format, q.optional_string(key));
    if (!format) continue;
    if (*format == "gptq") {
      out->zero_offset = 1;
    } else if (*format == "gptq_v2") {
      out->zero_offset = 0;
    } else {
      return make_error("{}: '{}' \"{}\" is not supported (kiln reads \"gptq\" and \"gptq_v2\"; marlin / bitblas "
                        "repackings are kernel layouts)",
                        q.where(), key, *format);
    }
  }
  out->description = fmt::format("gptq int4 {}{}{} ({} zeros)",
                                 out->group_size < 0 ? "per-channel" : fmt::format("g{}", out->group_size),
                                 out->sym ? " sym" : " asym", out->desc_act ? " desc_act" : "",
                                 out->zero_offset == 1 ? "v1" : "v2");
  return Status::Ok();
}

Result<std::vector<int64_t>> parse_block(const Fields& q, const char* key) {
  const Json& v = q.at(key);
  if (!v.is_array() || v.size() != 2 || !v[0].is_number_unsigned() || !v[1].is_number_unsigned() ||
      v[0].get<uint64_t>() == 0 || v[1].get<uint64_t>() == 0 || v[0].get<uint64_t>() > (1u << 30) ||
      v[1].get<uint64_t>() > (1u << 30)) {
    return q.type_error(key, "[rows, columns], two positive integers");
  }
  return std::vector<int64_t>{v[0].get<int64_t>(), v[1].get<int64_t>()};
}

// HF FineGrainedFP8Config / vLLM Fp8Config checkpoints.
Status parse_fp8(const Fields& q, HfQuantConfig* out) {
  out->method = HfQuantMethod::Fp8;
  out->bits = 8;
  KILN_ASSIGN(const std::optional<std::string> fmt_name, q.optional_string("fmt"));
  if (fmt_name && *fmt_name != "e4m3") {
    return make_error("{}: 'fmt' \"{}\" is not supported (kiln reads float8 e4m3 weights)", q.where(), *fmt_name);
  }
  KILN_ASSIGN(const std::optional<std::string> activation, q.optional_string("activation_scheme"));
  if (activation && *activation != "dynamic" && *activation != "static") {
    return make_error("{}: 'activation_scheme' \"{}\": expected \"dynamic\" or \"static\"", q.where(), *activation);
  }
  if (q.has("weight_block_size")) {
    KILN_ASSIGN(out->fp8_block, parse_block(q, "weight_block_size"));
    out->fp8_strategy = "block";
    out->description = fmt::format("fp8 e4m3 block {}x{}", out->fp8_block[0], out->fp8_block[1]);
  } else {
    out->fp8_strategy = "tensor";
    out->description = "fp8 e4m3 per-tensor";
  }
  return Status::Ok();
}

// compressed-tensors (llm-compressor) with float8 weights: one config group of 8-bit float weights.
Status parse_compressed_tensors(const Fields& q, HfQuantConfig* out) {
  out->method = HfQuantMethod::CompressedTensorsFp8;
  out->bits = 8;
  KILN_ASSIGN(const std::optional<std::string> format, q.optional_string("format"));
  if (format != "float-quantized") {
    return make_error("{}: 'format' {} is not supported (kiln reads compressed-tensors \"float-quantized\" fp8 weights)",
                      q.where(), format ? "\"" + *format + "\"" : std::string("(absent)"));
  }
  KILN_ASSIGN(const std::optional<std::string> status, q.optional_string("quantization_status"));
  if (status && *status != "compressed") {
    return make_error("{}: 'quantization_status' \"{}\": expected \"compressed\" (weights stored quantized)", q.where(),
                      *status);
  }
  if (q.has("sparsity_config") && !(q.at("sparsity_config").is_object() && q.at("sparsity_config").empty())) {
    return make_error("{}: 'sparsity_config' is not supported (kiln reads dense weights)", q.where());
  }
  if (!q.has("config_groups") || !q.at("config_groups").is_object() || q.at("config_groups").size() != 1) {
    return q.type_error("config_groups", "an object with exactly one quantization group");
  }
  const auto group_it = q.at("config_groups").begin();
  const Fields group(group_it.value(), fmt::format("{}: config_groups.{}", q.where(), group_it.key()));
  if (!group_it.value().is_object() || !group.has("weights") || !group.at("weights").is_object()) {
    return make_error("{}: expected an object with a 'weights' object", group.where());
  }
  const Fields weights(group.at("weights"), group.where() + ".weights");
  KILN_ASSIGN(const std::optional<int64_t> bits, weights.optional_int("num_bits"));
  KILN_ASSIGN(const std::optional<std::string> type, weights.optional_string("type"));
  if (bits != 8 || type != "float") {
    return make_error("{}: weights of {} bits, type {} are not supported (kiln reads num_bits 8, type \"float\": fp8 "
                      "e4m3)",
                      weights.where(), bits ? std::to_string(*bits) : "?", type ? "\"" + *type + "\"" : "?");
  }
  KILN_ASSIGN(const bool symmetric, weights.bool_or("symmetric", true));
  if (!symmetric) return make_error("{}: 'symmetric' false is not supported for float weights", weights.where());
  KILN_ASSIGN(const bool dynamic, weights.bool_or("dynamic", false));
  if (dynamic) return make_error("{}: 'dynamic' true: weights must carry stored scales", weights.where());
  KILN_ASSIGN(const std::optional<std::string> strategy, weights.optional_string("strategy"));
  if (strategy != "tensor" && strategy != "channel" && strategy != "block") {
    return make_error("{}: 'strategy' {} is not supported (kiln reads \"tensor\", \"channel\" and \"block\")",
                      weights.where(), strategy ? "\"" + *strategy + "\"" : std::string("(absent)"));
  }
  out->fp8_strategy = *strategy;
  if (*strategy == "block") {
    if (!weights.has("block_structure")) return make_error("{}: strategy block needs 'block_structure'", weights.where());
    KILN_ASSIGN(out->fp8_block, parse_block(weights, "block_structure"));
    out->description = fmt::format("compressed-tensors fp8 e4m3 block {}x{}", out->fp8_block[0], out->fp8_block[1]);
  } else {
    out->description = fmt::format("compressed-tensors fp8 e4m3 per-{}", *strategy);
  }
  return Status::Ok();
}

std::string shape_text(const std::vector<int64_t>& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

Status expect_tensor(const TensorView& t, std::initializer_list<DType> dtypes, const std::vector<int64_t>& shape,
                     const std::string& what) {
  const bool dtype_ok = std::find(dtypes.begin(), dtypes.end(), t.dtype) != dtypes.end();
  if (dtype_ok && t.shape == shape) return Status::Ok();
  std::vector<std::string> names;
  for (DType d : dtypes) names.emplace_back(dtype_name(d));
  return make_error("tensor '{}': expected {} {}{}, found {} {}", t.name, fmt::join(names, " or "), shape_text(shape),
                    what.empty() ? "" : " (" + what + ")", dtype_name(t.dtype), shape_text(t.shape));
}

uint32_t load_u32(const TensorView& t, int64_t index) {
  uint32_t v;
  std::memcpy(&v, t.data + 4 * index, 4);
  return v;
}

// A float scalar of an F32 / F16 / BF16 tensor, widened exactly.
double load_float(const TensorView& t, int64_t index) {
  if (t.dtype == DType::F32) {
    float v;
    std::memcpy(&v, t.data + 4 * index, 4);
    return v;
  }
  uint16_t h;
  std::memcpy(&h, t.data + 2 * index, 2);
  return t.dtype == DType::F16 ? f16_to_f32(h) : bf16_to_f32(h);
}

// Writes int4 code q of element (n, k) in common/quant.h's layout (element i of a 32-block in the low
// nibble of byte i, element i + 16 in its high nibble).
void put_code4(QuantizedMatrix& m, int64_t n, int64_t k, uint32_t q) {
  uint8_t& byte = m.codes[n * quant_row_bytes(m.info, m.cols) + (k / kQuantBlock) * 16 + (k % 16)];
  byte = (k % kQuantBlock) < 16 ? static_cast<uint8_t>((byte & 0xf0) | q) : static_cast<uint8_t>((byte & 0x0f) | (q << 4));
}

void put_f32(std::vector<uint8_t>& bytes, int64_t index, float v) { std::memcpy(bytes.data() + 4 * index, &v, 4); }

// The int4 layout of a W = s * (q - z) matrix with groups along K: F32 scale s and min -s * z (s is an
// f16 and z an integer <= 16, so both are exact in f32 and s * q + min == s * (q - z) exactly).
Result<QuantizedMatrix> make_int4(const std::string& module, const char* format, int64_t N, int64_t K, int64_t group) {
  QuantInfo info;
  info.bits = 4;
  info.group_size = group;
  info.scale_dtype = DType::F32;
  info.has_min = true;
  if (group < K && group % 32 != 0) {
    return make_error("{}: {} group_size {} is not supported (kiln's int4 groups are a multiple of 32 elements, or "
                      "the whole row)",
                      module, format, group);
  }
  KILN_TRY(validate_quant(info, N, K, module));
  return make_quantized_matrix(N, K, info);
}

Status check_dims(const std::string& module, int64_t N, int64_t K) {
  if (N <= 0 || K <= 0) return make_error("{}: empty matrix [{}, {}]", module, N, K);
  return Status::Ok();
}

// ---- fp8 ----

Result<HfQuantWeights> unpack_fp8_checkpoint(const HfQuantConfig& config, const std::map<std::string, TensorView>& tensors) {
  HfQuantWeights out;
  const bool hf_block = config.method == HfQuantMethod::Fp8 && config.fp8_strategy == "block";
  const std::string scale_suffix = hf_block ? ".weight_scale_inv" : ".weight_scale";
  for (const auto& [name, t] : tensors) {
    const bool scale_like = name.ends_with(".weight_scale") || name.ends_with(".weight_scale_inv");
    if (scale_like) {
      const std::string module = name.substr(0, name.rfind(".weight_scale"));
      auto weight = tensors.find(module + ".weight");
      if (!name.ends_with(scale_suffix)) {
        return make_error("tensor '{}': a {} checkpoint stores scales as '{}{}'", name, config.description, module,
                          scale_suffix);
      }
      if (weight == tensors.end() || weight->second.dtype != DType::F8_E4M3) {
        return make_error("tensor '{}': its weight '{}.weight' is {} (expected F8_E4M3)", name, module,
                          weight == tensors.end() ? "missing" : std::string(dtype_name(weight->second.dtype)));
      }
    }
    if (name.ends_with(".weight_shape_original")) {
      return make_error("tensor '{}': padded block-quantized weights are not supported", name);
    }
    if (t.dtype != DType::F8_E4M3) continue;
    if (!name.ends_with(".weight")) return make_error("tensor '{}': F8_E4M3 outside a '.weight' tensor", name);
    const std::string module = name.substr(0, name.size() - 7);
    if (t.shape.size() != 2) return make_error("tensor '{}': expected a matrix, found shape {}", name, shape_text(t.shape));
    auto scale = tensors.find(module + scale_suffix);
    if (scale == tensors.end()) return make_error("{}: missing tensor '{}{}' (the scale of an F8_E4M3 weight)", module, module, scale_suffix);
    KILN_ASSIGN(std::vector<float> w, dequantize_fp8(module, t, scale->second, config.fp8_strategy, config.fp8_block));
    out.consumed.push_back(scale->first);
    // Activation / zero-point companions: activations run in float here, so only their presence is checked.
    for (const char* extra : {".input_scale", ".weight_zero_point"}) {
      auto it = tensors.find(module + extra);
      if (it == tensors.end()) continue;
      if (std::string(extra) == ".weight_zero_point") {
        for (int64_t i = 0; i < static_cast<int64_t>(it->second.nbytes); ++i) {
          if (it->second.data[i] != 0) return make_error("tensor '{}': non-zero zero points (kiln reads symmetric fp8)", it->first);
        }
      }
      out.consumed.push_back(it->first);
    }
    auto owner = std::make_shared<std::vector<float>>(std::move(w));
    TensorView view;
    view.name = name;
    view.dtype = DType::F32;
    view.shape = t.shape;
    view.data = reinterpret_cast<const uint8_t*>(owner->data());
    view.nbytes = owner->size() * sizeof(float);
    view.owner = owner;
    out.dequantized[name] = std::move(view);
  }
  if (out.dequantized.empty()) {
    return make_error("quantization_config is {} but no tensor is F8_E4M3", config.description);
  }
  out.notes.push_back(fmt::format("{}: {} matrices dequantized to float (fp8 kernels are CUDA work not done yet); "
                                  "activation scales, if any, are ignored: activations run in float",
                                  config.description, out.dequantized.size()));
  return out;
}

}  // namespace

float f8e4m3_to_f32(uint8_t bits) {
  const int sign = bits >> 7, exponent = (bits >> 3) & 0xf, mantissa = bits & 7;
  if (exponent == 0xf && mantissa == 7) return std::numeric_limits<float>::quiet_NaN();
  const float magnitude = exponent == 0 ? std::ldexp(static_cast<float>(mantissa), -9)   // subnormal: m/8 * 2^-6
                                        : std::ldexp(static_cast<float>(8 + mantissa), exponent - 10);  // (1 + m/8) * 2^(e-7)
  return sign ? -magnitude : magnitude;
}

Result<std::optional<HfQuantConfig>> parse_hf_quant_config(const std::string& config_json_text, const std::string& origin) {
  KILN_ASSIGN(const Json json, parse_json_strict(config_json_text, origin));
  if (!json.is_object() || !json.contains("quantization_config") || json["quantization_config"].is_null()) {
    return std::optional<HfQuantConfig>();
  }
  const Json& block = json["quantization_config"];
  const std::string where = origin + ": quantization_config";
  if (!block.is_object()) return make_error("{}: expected an object, found {}", where, json_describe(block));
  const Fields q(block, where);
  KILN_ASSIGN(const std::optional<std::string> method, q.optional_string("quant_method"));
  if (!method) return make_error("{}: missing required field 'quant_method' (kiln reads {})", where, kSupported);
  HfQuantConfig config;
  config.quant_method = *method;
  if (*method == "awq") {
    KILN_TRY(parse_awq(q, &config));
  } else if (*method == "gptq") {
    KILN_TRY(parse_gptq(q, &config));
  } else if (*method == "fp8") {
    KILN_TRY(parse_fp8(q, &config));
  } else if (*method == "compressed-tensors") {
    KILN_TRY(parse_compressed_tensors(q, &config));
  } else {
    return make_error("{}: quant_method \"{}\" is not supported (kiln reads {})", where, *method, kSupported);
  }
  return std::optional<HfQuantConfig>(std::move(config));
}

Result<std::optional<HfQuantConfig>> read_hf_quant_config(const std::string& model_dir) {
  const std::string path = (std::filesystem::path(model_dir) / "config.json").string();
  KILN_ASSIGN(const std::string text, read_text_file(path));
  return parse_hf_quant_config(text, path);
}

Result<QuantizedMatrix> unpack_awq_gemm(const std::string& module, const TensorView& qweight, const TensorView& qzeros,
                                        const TensorView& scales, int64_t group_size) {
  if (qweight.dtype != DType::I32 || qweight.shape.size() != 2) {
    return make_error("tensor '{}': expected I32 [K, N / 8], found {} {}", qweight.name, dtype_name(qweight.dtype),
                      shape_text(qweight.shape));
  }
  const int64_t K = qweight.shape[0], N = qweight.shape[1] * 8;
  KILN_TRY(check_dims(module, N, K));
  const int64_t G = group_size < 0 ? K : group_size;
  if (K % G != 0) {
    return make_error("tensor '{}': K = {} is not a multiple of group_size {} (AWQ groups divide K)", qweight.name, K, G);
  }
  const int64_t groups = K / G;
  KILN_TRY(expect_tensor(qzeros, {DType::I32}, {groups, N / 8}, "K / group_size, N / 8"));
  KILN_TRY(expect_tensor(scales, {DType::F16}, {groups, N}, "K / group_size, N"));
  KILN_ASSIGN(QuantizedMatrix m, make_int4(module, "awq", N, K, G));
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t word = 0; word < N / 8; ++word) {
      const uint32_t packed = load_u32(qzeros, g * (N / 8) + word);
      for (int i = 0; i < 8; ++i) {
        const int64_t n = word * 8 + kAwqOrder[i];
        const float s = static_cast<float>(load_float(scales, g * N + n));
        const float z = static_cast<float>((packed >> (4 * i)) & 15u);
        put_f32(m.scales, n * groups + g, s);
        put_f32(m.mins, n * groups + g, -s * z);
      }
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t word = 0; word < N / 8; ++word) {
      const uint32_t packed = load_u32(qweight, k * (N / 8) + word);
      for (int i = 0; i < 8; ++i) put_code4(m, word * 8 + kAwqOrder[i], k, (packed >> (4 * i)) & 15u);
    }
  }
  return m;
}

Result<QuantizedMatrix> unpack_gptq(const std::string& module, const TensorView& qweight, const TensorView& qzeros,
                                    const TensorView& scales, const TensorView* g_idx, int64_t group_size,
                                    int zero_offset, GptqRequantization* requant) {
  *requant = GptqRequantization{};
  if (qweight.dtype != DType::I32 || qweight.shape.size() != 2) {
    return make_error("tensor '{}': expected I32 [K / 8, N], found {} {}", qweight.name, dtype_name(qweight.dtype),
                      shape_text(qweight.shape));
  }
  const int64_t K = qweight.shape[0] * 8, N = qweight.shape[1];
  KILN_TRY(check_dims(module, N, K));
  if (N % 8 != 0) return make_error("tensor '{}': N = {} is not a multiple of 8 (qzeros packs 8 columns a word)", qweight.name, N);
  const int64_t G = group_size < 0 ? K : group_size;
  const int64_t groups = (K + G - 1) / G;
  KILN_TRY(expect_tensor(qzeros, {DType::I32}, {groups, N / 8}, "ceil(K / group_size), N / 8"));
  KILN_TRY(expect_tensor(scales, {DType::F16}, {groups, N}, "ceil(K / group_size), N"));
  // The group of each input channel; act-order (desc_act) checkpoints interleave them.
  if (g_idx) KILN_TRY(expect_tensor(*g_idx, {DType::I32}, {K}, "K"));
  std::vector<int64_t> group_of(K);
  bool contiguous = true;
  for (int64_t k = 0; k < K; ++k) {
    group_of[k] = k / G;
    if (!g_idx) continue;
    const int32_t g = static_cast<int32_t>(load_u32(*g_idx, k));
    if (g < 0 || g >= groups) {
      return make_error("tensor '{}': entry {} is {}, outside the {} groups", g_idx->name, k, g, groups);
    }
    contiguous = contiguous && g == k / G;
    group_of[k] = g;
  }
  // zero[g, n] and scale[g, n] as floats: both exact.
  std::vector<float> zero(groups * N), scale(groups * N);
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t n = 0; n < N; ++n) {
      zero[g * N + n] = static_cast<float>(((load_u32(qzeros, g * (N / 8) + n / 8) >> (4 * (n % 8))) & 15u) + zero_offset);
      scale[g * N + n] = static_cast<float>(load_float(scales, g * N + n));
    }
  }
  const auto code = [&](int64_t n, int64_t k) { return (load_u32(qweight, (k / 8) * N + n) >> (4 * (k % 8))) & 15u; };
  if (contiguous) {
    KILN_ASSIGN(QuantizedMatrix m, make_int4(module, "gptq", N, K, G));
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t g = 0; g < groups; ++g) {
        put_f32(m.scales, n * groups + g, scale[g * N + n]);
        put_f32(m.mins, n * groups + g, -scale[g * N + n] * zero[g * N + n]);
      }
      for (int64_t k = 0; k < K; ++k) put_code4(m, n, k, code(n, k));
    }
    return m;
  }
  // Interleaved groups: no contiguous-group int4 form is exact. The dequantized values (exact in f32)
  // are re-quantized to int8 in groups of 32 with an F32 scale and min, an error of at most
  // range / 510 per group, against int4's own step of range / 15.
  std::vector<float> w(N * K);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K; ++k) {
      const int64_t at = group_of[k] * N + n;
      w[n * K + k] = scale[at] * (static_cast<float>(code(n, k)) - zero[at]);
    }
  }
  QuantInfo info;
  info.bits = 8;
  info.group_size = 32;
  info.scale_dtype = DType::F32;
  info.has_min = true;
  KILN_TRY(validate_quant(info, N, K, module));
  QuantizedMatrix m = quantize_rtn(w.data(), N, K, info);
  requant->requantized = true;
  std::vector<float> row(K);
  for (int64_t n = 0; n < N; ++n) {
    dequantize_row(m.view(), n, row.data());
    for (int64_t k = 0; k < K; ++k) {
      requant->max_error = std::max(requant->max_error, static_cast<double>(std::abs(row[k] - w[n * K + k])));
      requant->max_abs = std::max(requant->max_abs, static_cast<double>(std::abs(w[n * K + k])));
    }
  }
  return m;
}

Result<std::vector<float>> dequantize_fp8(const std::string& module, const TensorView& weight, const TensorView& scale,
                                          const std::string& strategy, const std::vector<int64_t>& block) {
  if (weight.dtype != DType::F8_E4M3 || weight.shape.size() != 2) {
    return make_error("tensor '{}': expected F8_E4M3 [N, K], found {} {}", weight.name, dtype_name(weight.dtype),
                      shape_text(weight.shape));
  }
  const int64_t N = weight.shape[0], K = weight.shape[1];
  KILN_TRY(check_dims(module, N, K));
  const auto floats = {DType::F32, DType::F16, DType::BF16};
  int64_t bn = N, bk = K;  // the block each scale covers
  if (strategy == "tensor") {
    if (scale.numel() != 1 || scale.shape.size() > 1) KILN_TRY(expect_tensor(scale, floats, {1}, "one scale per tensor"));
    KILN_TRY(expect_tensor(scale, floats, scale.shape, ""));
  } else if (strategy == "channel") {
    KILN_TRY(expect_tensor(scale, floats, {N, 1}, "one scale per output row"));
    bn = 1;
  } else if (strategy == "block") {
    bn = block.at(0), bk = block.at(1);
    KILN_TRY(expect_tensor(scale, floats, {(N + bn - 1) / bn, (K + bk - 1) / bk},
                           fmt::format("ceil(N / {}), ceil(K / {})", bn, bk)));
  } else {
    return make_error("{}: unknown fp8 scale strategy '{}'", module, strategy);
  }
  const int64_t scale_cols = (K + bk - 1) / bk;
  for (int64_t i = 0; i < scale.numel(); ++i) {
    if (!std::isfinite(load_float(scale, i))) return make_error("tensor '{}': entry {} is not finite", scale.name, i);
  }
  std::vector<float> w(N * K);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K; ++k) {
      const uint8_t bits = weight.data[n * K + k];
      if ((bits & 0x7f) == 0x7f) return make_error("tensor '{}': element [{}, {}] is NaN", weight.name, n, k);
      // One rounding: the product of a 4-bit and a 24-bit significand is exact in double.
      const double s = load_float(scale, (n / bn) * scale_cols + k / bk);
      w[n * K + k] = static_cast<float>(static_cast<double>(f8e4m3_to_f32(bits)) * s);
    }
  }
  return w;
}

Result<HfQuantWeights> unpack_hf_quantized(const HfQuantConfig& config, const std::map<std::string, TensorView>& tensors) {
  if (config.method == HfQuantMethod::Fp8 || config.method == HfQuantMethod::CompressedTensorsFp8) {
    return unpack_fp8_checkpoint(config, tensors);
  }
  HfQuantWeights out;
  const bool gptq = config.method == HfQuantMethod::Gptq;
  // Every packed part must belong to a module with a qweight.
  for (const auto& [name, t] : tensors) {
    for (const char* part : {".qzeros", ".scales", ".g_idx"}) {
      if (!name.ends_with(part)) continue;
      const std::string module = name.substr(0, name.size() - std::strlen(part));
      if (!tensors.count(module + ".qweight")) return make_error("tensor '{}': no '{}.qweight' beside it", name, module);
    }
  }
  double max_requant_error = 0, max_abs = 0;
  for (const auto& [name, t] : tensors) {
    if (!name.ends_with(".qweight")) continue;
    const std::string module = name.substr(0, name.size() - 8);
    if (tensors.count(module + ".weight")) {
      return make_error("tensor '{}': '{}.weight' is also present (a module is either packed or float)", name, module);
    }
    std::vector<const TensorView*> parts;
    for (const char* part : {".qzeros", ".scales"}) {
      auto it = tensors.find(module + part);
      if (it == tensors.end()) return make_error("{}: missing tensor '{}{}' (beside '{}')", module, module, part, name);
      parts.push_back(&it->second);
      out.consumed.push_back(it->first);
    }
    out.consumed.push_back(name);
    QuantizedMatrix m;
    if (gptq) {
      auto g_idx = tensors.find(module + ".g_idx");
      const TensorView* g = g_idx == tensors.end() ? nullptr : &g_idx->second;
      if (!g && config.desc_act) return make_error("{}: missing tensor '{}.g_idx' (desc_act is true)", module, module);
      if (g) out.consumed.push_back(g_idx->first);
      GptqRequantization requant;
      KILN_ASSIGN(m, unpack_gptq(module, t, *parts[0], *parts[1], g, config.group_size, config.zero_offset, &requant));
      if (requant.requantized) {
        ++out.requantized;
        max_requant_error = std::max(max_requant_error, requant.max_error);
        max_abs = std::max(max_abs, requant.max_abs);
      }
    } else {
      KILN_ASSIGN(m, unpack_awq_gemm(module, t, *parts[0], *parts[1], config.group_size));
    }
    out.quantized[module + ".weight"] = std::move(m);
  }
  if (out.quantized.empty()) return make_error("quantization_config is {} but no tensor ends in '.qweight'", config.description);
  if (out.requantized > 0) {
    out.notes.push_back(fmt::format(
        "{} of {} gptq matrices have an act-order g_idx (groups interleaved along K), which kiln's contiguous groups "
        "cannot hold exactly: re-quantized to int8 g32 f32 +min (max |error| {:.3g}, {:.3g} of the largest |weight|)",
        out.requantized, out.quantized.size(), max_requant_error, max_abs > 0 ? max_requant_error / max_abs : 0.0));
  }
  return out;
}

}  // namespace kiln
