// Pre-quantized HF checkpoints end to end: `kiln build` of every tests/fixtures/hf-quant fixture (fp32,
// CPU), all-position logits against the float64 numpy forward of the checkpoint's own DEQUANTIZED
// weights (tools/make_quantized_fixtures.py), the fused engine against the --no-fuse one (quantized
// q/k/v and gate/up siblings fused), and the build-side refusals.
//
// Tolerances (|kiln - golden| over every logit, relative to the largest |golden logit|):
//   - exact formats (awq, gptq with contiguous groups, fp8): the engine holds the checkpoint's values
//     exactly, so only fp32 arithmetic differs from float64: dot products of K <= 192 terms (~sqrt(K)
//     * 2^-24 relative each), int4 kernels computing s * sum(q x) + min * sum(x) (cancellation up to
//     ~16x the result, as zero <= 16), two layers, softmax and RMSNorm: ~1e-6 expected; bound 5e-5.
//   - gptq with act-order g_idx: int8 re-quantization adds per weight an error <= range / 510 of its
//     group of 32, i.e. ~0.5% RMS relative to the weights (uniform codes, zeros up to 16); carried
//     through two layers that is ~1% of the logits: bound 3e-2.
//   - fused vs unfused: the same matrices; only the order of a few f32 operations differs (add+RMSNorm,
//     SwiGLU into down): 1e-5 (observed <= 1.1e-6).
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>

#include <gtest/gtest.h>

#include "compiler/build_engine.h"
#include "engine/engine_file.h"
#include "format/safetensors.h"
#include "runtime/model.h"
#include "compiler/compiler_test_util.h"
#include "test_util.h"

namespace kiln {
namespace {

using testing::read_json;
using testing::source_path;
using testing::TempDir;

std::string fixture(const std::string& name) { return source_path("tests/fixtures/hf-quant/" + name); }

Result<BuildReport> build(const std::string& model, const std::string& out, bool fuse = true,
                          const std::string& dtype = "fp32", const std::string& quant = "none") {
  BuildOptions o;
  o.model_path = model;
  o.output_path = out;
  o.dtype = dtype;
  o.fuse = fuse;
  o.max_seq_len = 64;
  o.quant = quant;
  return build_engine(o);
}

std::unique_ptr<Model> load(const std::string& path) { return testing::load_for_logits(path); }
using testing::all_logits;

struct Case {
  std::vector<int32_t> ids;
  std::vector<double> logits;  // [T, vocab]
};

std::vector<Case> golden_cases(const std::string& name) {
  const nlohmann::json golden = read_json(fixture(name) + "/golden.json");
  auto file = open_safetensors(fixture(name) + "/golden.safetensors");
  EXPECT_TRUE(file.ok()) << (file.ok() ? "" : file.error().message);
  std::vector<Case> cases;
  if (!file.ok()) return cases;
  for (const auto& c : golden["cases"]) {
    Case out;
    for (const auto& id : c["ids"]) out.ids.push_back(id.get<int32_t>());
    for (const TensorView& t : file->tensors) {
      if (t.name != c["tensor"].get<std::string>()) continue;
      EXPECT_EQ(t.dtype, DType::F64);
      out.logits.resize(t.numel());
      std::memcpy(out.logits.data(), t.data, t.nbytes);
    }
    EXPECT_EQ(out.logits.size(), out.ids.size() * 512) << name;
    cases.push_back(std::move(out));
  }
  return cases;
}

// max |a - b| / max |b|
double max_error(const std::vector<float>& a, const std::vector<double>& b) {
  double err = 0, scale = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    err = std::max(err, std::abs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::abs(b[i]));
  }
  return err / scale;
}

struct Expectation {
  const char* name;
  double tolerance;  // see the top of the file
  const char* description;
};

constexpr double kExact = 5e-5;
constexpr double kRequantized = 3e-2;
const Expectation kFixtures[] = {
    {"llama-awq", kExact, "awq gemm int4 g64"},
    {"qwen2-awq", kExact, "awq gemm int4 g32"},
    {"llama-gptq", kExact, "gptq int4 g128 sym (v1 zeros)"},
    {"qwen2-gptq-asym", kExact, "gptq int4 g64 asym (v1 zeros)"},
    {"llama-gptq-act", kRequantized, "gptq int4 g32 sym desc_act (v1 zeros)"},
    {"qwen2-gptq-act-v2", kRequantized, "gptq int4 g64 asym desc_act (v2 zeros)"},
    {"llama-fp8", kExact, "fp8 e4m3 per-tensor"},
    {"qwen2-fp8-block", kExact, "fp8 e4m3 block 32x64"},
    {"llama-ct-fp8", kExact, "compressed-tensors fp8 e4m3 per-channel"},
    {"qwen2-ct-fp8-block", kExact, "compressed-tensors fp8 e4m3 block 64x32"},
};

TEST(Prequantized, LogitsMatchTheDequantizedFloat64Forward) {
  TempDir dir;
  for (const Expectation& e : kFixtures) {
    SCOPED_TRACE(e.name);
    const std::string fused = dir.file(std::string(e.name) + ".kiln"), unfused = dir.file(std::string(e.name) + "-nofuse.kiln");
    auto report = build(fixture(e.name), fused);
    ASSERT_TRUE(report.ok()) << report.error().message;
    EXPECT_EQ(report->quant, std::string("checkpoint ") + e.description);
    EXPECT_EQ(report->fused_qkv, 2);      // quantized q/k/v siblings fuse (equal layouts)
    EXPECT_EQ(report->fused_gate_up, 2);
    auto report_unfused = build(fixture(e.name), unfused, /*fuse=*/false);
    ASSERT_TRUE(report_unfused.ok()) << report_unfused.error().message;
    auto model = load(fused);
    auto model_unfused = load(unfused);
    ASSERT_TRUE(model && model_unfused);
    double worst = 0, worst_fusion = 0;
    for (const Case& c : golden_cases(e.name)) {
      const std::vector<float> logits = all_logits(*model, c.ids);
      const std::vector<float> logits_unfused = all_logits(*model_unfused, c.ids);
      worst = std::max(worst, max_error(logits, c.logits));
      std::vector<double> as_double(logits.begin(), logits.end());
      worst_fusion = std::max(worst_fusion, max_error(logits_unfused, as_double));
    }
    EXPECT_LE(worst, e.tolerance);
    EXPECT_LE(worst_fusion, 1e-5);
    std::printf("  %-20s max |kiln - golden| / max |golden| = %.3g (bound %.0e); fused vs unfused %.3g\n", e.name,
                worst, e.tolerance, worst_fusion);
  }
}

TEST(Prequantized, EngineRecordsTheCheckpointFormat) {
  TempDir dir;
  ASSERT_TRUE(build(fixture("llama-gptq-act"), dir.file("a.kiln")).ok());
  auto engine = load_engine(dir.file("a.kiln"), LoadOptions{});
  ASSERT_TRUE(engine.ok()) << engine.error().message;
  const nlohmann::json& recorded = engine->metadata["build"]["checkpoint_quant"];
  EXPECT_EQ(recorded["quant_method"], "gptq");
  EXPECT_EQ(recorded["description"], "gptq int4 g32 sym desc_act (v1 zeros)");
  EXPECT_EQ(recorded["quantized_matrices"], 14);
  EXPECT_EQ(recorded["requantized_matrices"], 14);
  ASSERT_TRUE(build(source_path("tests/fixtures/hf/mistral"), dir.file("b.kiln")).ok());
  auto plain = load_engine(dir.file("b.kiln"), LoadOptions{});
  ASSERT_TRUE(plain.ok());
  EXPECT_TRUE(plain->metadata["build"]["checkpoint_quant"].is_null());
}

TEST(Prequantized, Fp8TakesTheEngineDtype) {
  TempDir dir;
  const std::vector<Case> cases = golden_cases("qwen2-fp8-block");
  ASSERT_FALSE(cases.empty());
  for (const char* dtype : {"fp16", "bf16"}) {
    SCOPED_TRACE(dtype);
    auto report = build(fixture("qwen2-fp8-block"), dir.file(std::string(dtype) + ".kiln"), true, dtype);
    ASSERT_TRUE(report.ok()) << report.error().message;
    auto model = load(dir.file(std::string(dtype) + ".kiln"));
    ASSERT_TRUE(model);
    // e4m3 * an f32 scale rounded to fp16 / bf16 (2^-11 / 2^-8 relative per weight), and fp16 / bf16
    // embedding and norm weights: bf16's 2^-8 through two layers is ~1% of the logits; bound 3e-2.
    const double err = max_error(all_logits(*model, cases[0].ids), cases[0].logits);
    EXPECT_LE(err, 3e-2);
    std::printf("  qwen2-fp8-block --dtype %s: max |kiln - golden| / max |golden| = %.3g\n", dtype, err);
  }
}

void copy_fixture(const std::string& name, const std::string& to) {
  std::filesystem::create_directories(to);
  for (const char* f : {"config.json", "model.safetensors"}) {
    std::filesystem::copy_file(fixture(name) + "/" + f, to + "/" + f);
  }
}

void rewrite_config(const std::string& dir, const std::function<void(nlohmann::json&)>& edit) {
  nlohmann::json config = read_json(dir + "/config.json");
  edit(config);
  std::ofstream(dir + "/config.json") << config.dump(1);
}

std::string build_error(const std::string& model, const std::string& quant = "none") {
  TempDir out;
  auto r = build(model, out.file("x.kiln"), true, "fp32", quant);
  if (r.ok()) return "(built)";
  EXPECT_EQ(r.error().message.find('\n'), std::string::npos) << r.error().message;
  return r.error().message;
}

TEST(Prequantized, RefusesWhatItCannotRead) {
  // --quant on an int4 checkpoint: refused (its matrices are already quantized).
  const std::string quant = build_error(fixture("llama-awq"), "int8");
  EXPECT_NE(quant.find("--quant int8: " + fixture("llama-awq") + " is already quantized (awq gemm int4 g64); build it without --quant"),
            std::string::npos)
      << quant;

  TempDir dir;
  const std::string no_config = dir.file("no-config");
  copy_fixture("llama-gptq", no_config);
  rewrite_config(no_config, [](nlohmann::json& c) { c.erase("quantization_config"); });
  const std::string m1 = build_error(no_config);
  EXPECT_NE(m1.find("tensor 'model.layers.0.mlp.down_proj.qweight' is packed but config.json has no quantization_config"),
            std::string::npos)
      << m1;

  const std::string bnb = dir.file("bnb");
  copy_fixture("llama-gptq", bnb);
  rewrite_config(bnb, [](nlohmann::json& c) { c["quantization_config"] = {{"quant_method", "bitsandbytes"}, {"load_in_4bit", true}}; });
  const std::string m2 = build_error(bnb);
  EXPECT_NE(m2.find("config.json: quantization_config: quant_method \"bitsandbytes\" is not supported (kiln reads awq"),
            std::string::npos)
      << m2;

  const std::string bits8 = dir.file("bits8");
  copy_fixture("llama-gptq", bits8);
  rewrite_config(bits8, [](nlohmann::json& c) { c["quantization_config"]["bits"] = 8; });
  const std::string m3 = build_error(bits8);
  EXPECT_NE(m3.find("quantization_config: 'bits' 8 is not supported (gptq checkpoints are read with 4 bits)"), std::string::npos)
      << m3;

  // A checkpoint tensor named in the error, with the model directory as context.
  const std::string wrong_kind = dir.file("wrong-kind");
  copy_fixture("llama-awq", wrong_kind);
  rewrite_config(wrong_kind, [](nlohmann::json& c) { c["quantization_config"] = {{"quant_method", "gptq"}, {"bits", 4}, {"group_size", 64}}; });
  const std::string m4 = build_error(wrong_kind);
  EXPECT_NE(m4.find(wrong_kind + ": tensor 'model.layers.0.mlp.down_proj.qzeros': expected I32 [24, 1]"), std::string::npos)
      << m4;
}

}  // namespace
}  // namespace kiln
