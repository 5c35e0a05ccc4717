// End to end: the fp16 KV cache of the CPU backend, the default for fp16 / bf16 engines.
//   - which cache `kiln build` records for each --dtype / --kv-cache / backend, and the cuda refusals;
//   - fp16-KV engines against the same engine with --kv-cache fp32: half the bytes for the same blocks,
//     the same greedy ids, and teacher-forced logits within a bar set from what was measured (the cache
//     rounds K and V to 11 significant bits, a relative 2^-12, on top of the weights' own rounding);
//   - the CLI: build line, `kiln inspect`, `kiln run`, the KV bytes `kiln bench` reports, and one
//     error line for an engine whose metadata names a KV cache this kiln does not know;
//   - the KV capacity: the model's context by default (no 4096 cap on the cpu), a warning line past it,
//     and a cache for a very long context that is committed only as positions are written.
#include <filesystem>
#include <fstream>
#include <sstream>

#include "backend/kv_cache_dtype.h"
#include "cli/cli_runner.h"
#include "parity_checks.h"
#include "runtime/evaluate.h"

namespace kiln {
namespace {

using testing::kiln;
using testing::Outcome;
using testing::shared_path;
using testing::TempDir;

const std::string kStories = shared_path("models/stories260K/stories260K.bin");
const std::string kStoriesTok = shared_path("models/stories260K/tok512.bin");

BuildOptions options_for(const TempDir& dir, const std::string& model, const std::string& tokenizer, const std::string& dtype,
                         const std::string& kv_cache, const std::string& backend = "cpu") {
  BuildOptions options;
  options.model_path = model;
  options.tokenizer_path = tokenizer;
  options.output_path = dir.file(std::filesystem::path(model).stem().string() + "-" + dtype + "-" + kv_cache + "-" + backend + ".kiln");
  options.dtype = dtype;
  options.kv_cache = kv_cache;
  options.backend = backend;
  options.max_seq_len = 256;
  if (backend == "cuda") {
    options.device_arch = "sm_90";
    options.tune = false;
  }
  return options;
}

// The engine's build.kv_cache ("null" when absent) and the build's report of it.
std::pair<std::string, std::string> recorded_kv_cache(const BuildOptions& options) {
  auto report = build_engine(options);
  if (!report.ok()) return {"error: " + report.error().message, ""};
  auto engine = load_engine(options.output_path, LoadOptions{});
  if (!engine.ok()) return {"error: " + engine.error().message, ""};
  const auto& build = engine->metadata.at("build");
  return {build.contains("kv_cache") ? build.at("kv_cache").dump() : "null", report->kv_cache};
}

TEST(KvFp16Build, RecordsTheCacheEachDtypeAndOptionAsksFor) {
  TempDir dir;
  struct Row {
    std::string dtype, kv_cache, backend, metadata, report;
  };
  const std::vector<Row> rows = {
      // cpu auto: fp16 for reduced-precision weights, fp32 (nothing written) for fp32 ones.
      {"bf16", "auto", "cpu", R"({"dtype":"fp16"})", "fp16"},
      {"fp16", "auto", "cpu", R"({"dtype":"fp16"})", "fp16"},
      {"fp32", "auto", "cpu", "null", "fp32"},
      // explicit choices, both spellings
      {"bf16", "fp32", "cpu", "null", "fp32"},
      {"bf16", "f32", "cpu", "null", "fp32"},
      {"fp32", "fp16", "cpu", R"({"dtype":"fp16"})", "fp16"},
      {"fp32", "f16", "cpu", R"({"dtype":"fp16"})", "fp16"},
      {"bf16", "int8", "cpu", R"({"dtype":"int8","scales":"per_token_head"})", "int8"},
      // cuda: the activation dtype, recorded as nothing; fp16 on an fp16 engine is that same cache.
      {"bf16", "auto", "cuda", "null", "activation dtype"},
      {"fp16", "fp16", "cuda", "null", "activation dtype"},
      {"bf16", "int8", "cuda", R"({"dtype":"int8","scales":"per_token_head"})", "int8"},
  };
  for (const Row& r : rows) {
    const auto [metadata, report] = recorded_kv_cache(options_for(dir, kStories, kStoriesTok, r.dtype, r.kv_cache, r.backend));
    EXPECT_EQ(metadata, r.metadata) << r.dtype << " --kv-cache " << r.kv_cache << " " << r.backend;
    EXPECT_EQ(report, r.report) << r.dtype << " --kv-cache " << r.kv_cache << " " << r.backend;
  }
}

TEST(KvFp16Build, CudaRefusesAKvCacheOtherThanItsActivationDtype) {
  TempDir dir;
  for (const auto& [dtype, kv_cache] : {std::pair{"bf16", "fp16"}, std::pair{"fp16", "fp32"}}) {
    auto report = build_engine(options_for(dir, kStories, kStoriesTok, dtype, kv_cache, "cuda"));
    ASSERT_FALSE(report.ok()) << dtype << " " << kv_cache;
    EXPECT_EQ(report.error().message,
              fmt::format("--kv-cache {}: the cuda backend keeps the KV cache in the activation dtype ({}); use --kv-cache auto",
                          kv_cache, std::string(dtype) == "bf16" ? "BF16" : "F16"));
  }
  auto unknown = build_engine(options_for(dir, kStories, kStoriesTok, "bf16", "fp8"));
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.error().message, "unknown --kv-cache 'fp8': expected auto, fp32, fp16 or int8");
}

std::unique_ptr<Model> load(const std::string& path, int64_t max_sequences = 0) {
  RuntimeOptions runtime;
  runtime.backend_options.num_threads = 2;
  runtime.backend_options.max_logit_rows = 128;
  runtime.backend_options.max_sequences = max_sequences;
  auto model = Model::load(path, runtime);
  EXPECT_TRUE(model.ok()) << (model.ok() ? "" : model.error().message);
  return model.ok() ? std::move(model).value() : nullptr;
}

struct Fp16Case {
  std::string name;
  std::string model, tokenizer;
  std::string dtype;
  // Bars over the f32-cache engine of the same weights, with margin over what was measured
  // (teacher-forced over the engine's own greedy continuations, see the test).
  double max_abs_logit_diff;
  double max_kl_mean;
};
void PrintTo(const Fp16Case& c, std::ostream* os) { *os << c.name; }

std::vector<Fp16Case> fp16_cases() {
  const std::string hf = shared_path("fixtures/hf-tiny/");
  // Each K and V element is rounded to 11 significant bits (relative error <= 2^-12); a score q.k moves
  // by up to 2^-12 sum|q k| scale, most where attention is sharp, and the logits follow. Measured over
  // 4 x 96 greedy tokens (399-405 positions), top-1 1.0 everywhere, with f32 matmuls (KILN_CPU_ISA=avx2
  // or scalar) and, in parentheses, with AVX-512 matmuls that round activations to bf16 (AVX512_BF16),
  // where a K/V difference far below a bf16 step can flip a rounding and so moves the logits more:
  return {
      // max |logit diff| 0.025 (0.115), KL mean 6.6e-7 (2.9e-5) nats; head_dim 8, sharp heads.
      {"stories260K_bf16", kStories, kStoriesTok, "bf16", 0.3, 1e-4},
      // max |logit diff| 1.3e-3 (1.3e-3), KL mean 7.7e-9 (7.7e-9); random weights, near-flat attention.
      {"tiny_llama_fp16", hf + "tiny-llama", "", "fp16", 5e-3, 5e-8},
      // max |logit diff| 9.4e-3 (0.196) on logits of magnitude ~1e3 (random weights whose perplexity is
      // ~1e17), KL mean 3.5e-8 (1.3e-5).
      {"tiny_qwen2_bf16", hf + "tiny-qwen2", "", "bf16", 0.5, 5e-5},
  };
}

class KvFp16 : public ::testing::TestWithParam<Fp16Case> {};

TEST_P(KvFp16, SameGreedyIdsAndCloseLogitsAsTheF32Cache) {
  const Fp16Case& c = GetParam();
  TempDir dir;
  const BuildOptions fp16_options = options_for(dir, c.model, c.tokenizer, c.dtype, "auto");
  const BuildOptions f32_options = options_for(dir, c.model, c.tokenizer, c.dtype, "fp32");
  ASSERT_TRUE(build_engine(fp16_options).ok());
  ASSERT_TRUE(build_engine(f32_options).ok());
  auto fp16 = load(fp16_options.output_path);
  auto f32 = load(f32_options.output_path);
  ASSERT_TRUE(fp16 && f32);

  // Same blocks, half the bytes: 2 head_dim bytes per (token, kv head) row instead of 4 head_dim.
  EXPECT_EQ(fp16->backend().kv_geometry().num_blocks, f32->backend().kv_geometry().num_blocks);
  EXPECT_EQ(2 * fp16->backend().kv_cache_bytes(), f32->backend().kv_cache_bytes());
  const auto& m = fp16->engine().metadata.at("model");
  const int64_t per_token = kv_cache_bytes_per_token(KvCacheDtype::Fp16, m.at("num_layers").get<int64_t>(),
                                                     m.at("num_kv_heads").get<int64_t>(), m.at("head_dim").get<int64_t>());
  const KvGeometry geometry = fp16->backend().kv_geometry();
  EXPECT_EQ(fp16->backend().kv_cache_bytes(), geometry.num_blocks * geometry.block_size * per_token);

  // Greedy ids: 96 tokens from four prompts, identical.
  ASSERT_NE(f32->tokenizer(), nullptr);
  std::vector<std::vector<int32_t>> continuations;
  for (const char* prompt : {"Once upon a time", "The cat", "Lily and Tom went to the park", "Hello"}) {
    const std::vector<int32_t> ids = f32->tokenizer()->encode(prompt, f32->tokenizer()->bos_id() >= 0);
    const auto got = testing::greedy(*fp16, ids, 96);
    const auto want = testing::greedy(*f32, ids, 96);
    EXPECT_EQ(got.ids, want.ids) << c.name << ": prompt '" << prompt << "'";
    std::vector<int32_t> sequence = ids;
    sequence.insert(sequence.end(), want.ids.begin(), want.ids.end());
    continuations.push_back(std::move(sequence));
  }
  // Logits at every position of those sequences, teacher-forced.
  EvalOptions options;
  options.window = 128;
  auto report = compare_engines(*f32, *fp16, continuations, options);
  ASSERT_TRUE(report.ok()) << report.error().message;
  std::printf("[ %s ] %ld positions: top-1 %.4f, KL mean %.3g max %.3g nats, max |logit diff| %.3g; KV %ld -> %ld bytes\n",
              c.name.c_str(), static_cast<long>(report->scored), report->top1_agreement, report->kl_mean, report->kl_max,
              report->max_abs_logit_diff, static_cast<long>(f32->backend().kv_cache_bytes()),
              static_cast<long>(fp16->backend().kv_cache_bytes()));
  EXPECT_EQ(report->top1_agreement, 1.0);
  EXPECT_LT(report->max_abs_logit_diff, c.max_abs_logit_diff);
  EXPECT_GT(report->max_abs_logit_diff, 0.0);  // the fp16 cache really ran
  EXPECT_LT(report->kl_mean, c.max_kl_mean);
}

INSTANTIATE_TEST_SUITE_P(Models, KvFp16, ::testing::ValuesIn(fp16_cases()),
                         [](const ::testing::TestParamInfo<Fp16Case>& info) { return info.param.name; });

// fp32 engines keep the f32 cache, so they still match the float64 reference to float32 accuracy.
TEST(KvFp16Parity, Fp32EngineKeepsTheF32CacheAndItsReferenceParity) {
  TempDir dir;
  const BuildOptions options = options_for(dir, kStories, kStoriesTok, "fp32", "auto");
  ASSERT_TRUE(build_engine(options).ok());
  auto model = load(options.output_path);
  ASSERT_TRUE(model);
  const auto& m = model->engine().metadata.at("model");
  const KvGeometry geometry = model->backend().kv_geometry();
  EXPECT_EQ(model->backend().kv_cache_bytes(),
            geometry.num_blocks * geometry.block_size *
                kv_cache_bytes_per_token(KvCacheDtype::Fp32, m.at("num_layers").get<int64_t>(),
                                         m.at("num_kv_heads").get<int64_t>(), m.at("head_dim").get<int64_t>()));
  testing::check_stories_reference("fp32", "cpu");
}

// Rewrites `from` to `to` (the same length) in the engine's metadata, leaving the checksum stale.
void patch_metadata(const std::string& path, const std::string& from, const std::string& to) {
  ASSERT_EQ(from.size(), to.size());
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const size_t at = bytes.find(from);
  ASSERT_NE(at, std::string::npos) << from;
  ASSERT_EQ(bytes.find(from, at + 1), std::string::npos) << from;
  f.seekp(static_cast<std::streamoff>(at));
  f.write(to.data(), static_cast<std::streamsize>(to.size()));
}

TEST(KvFp16Cli, BuildInspectRunAndBenchShowTheFp16Cache) {
  TempDir dir;
  const std::string engine = dir.file("bf16.kiln"), engine32 = dir.file("bf16-f32kv.kiln");
  const std::string common = kStories + " --tokenizer " + kStoriesTok + " --dtype bf16 --max-seq-len 256";
  const Outcome b = kiln(dir, "build " + common + " -o " + engine);
  ASSERT_EQ(b.exit_code, 0) << b.err;
  EXPECT_NE(b.err.find("; kv cache: fp16)"), std::string::npos) << b.err;
  const Outcome b32 = kiln(dir, "build " + common + " -o " + engine32 + " --kv-cache fp32");
  ASSERT_EQ(b32.exit_code, 0) << b32.err;
  EXPECT_NE(b32.err.find("; kv cache: fp32)"), std::string::npos) << b32.err;

  // stories260K: 5 layers x 4 kv heads x head_dim 8 x 2 (K, V) x 2 bytes = 640 bytes per token.
  const Outcome i = kiln(dir, "inspect " + engine);
  ASSERT_EQ(i.exit_code, 0) << i.err;
  EXPECT_NE(i.out.find(R"("kv_cache":{"dtype":"fp16"})"), std::string::npos) << i.out.substr(0, 2000);
  EXPECT_NE(i.out.find("\nkv cache      fp16: 640 bytes per token, 0.2 MiB per 256-token sequence\n"), std::string::npos)
      << i.out.substr(0, 2000);
  const Outcome i32 = kiln(dir, "inspect " + engine32);
  EXPECT_NE(i32.out.find("\nkv cache      fp32 (no build.kv_cache: the default): 1280 bytes per token"), std::string::npos)
      << i32.out.substr(0, 2000);

  // Greedy runs through the CLI: the same ids with either cache.
  const std::string run_args = " -p 'Once upon a time' -n 48 --temperature 0 --ignore-eos --json";
  const Outcome r = kiln(dir, "run " + engine + run_args);
  const Outcome r32 = kiln(dir, "run " + engine32 + run_args);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_EQ(r32.exit_code, 0) << r32.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["ids"], nlohmann::json::parse(r32.out)["ids"]);
  EXPECT_EQ(nlohmann::json::parse(r.out)["ids"].size(), 48u);

  // kiln bench sizes the cache for its workload (1 sequence of 40 + 9 - 1 positions: 3 blocks of 16)
  // and reports its bytes at 2 per element.
  const Outcome bench = kiln(dir, "bench " + engine + " -b 1 -p 40 -g 9 --iterations 1 --warmup 0 --json");
  ASSERT_EQ(bench.exit_code, 0) << bench.err;
  EXPECT_EQ(nlohmann::json::parse(bench.out)["kv_cache_bytes"].get<int64_t>(), 3 * 16 * 640) << bench.out;
  const Outcome bench32 = kiln(dir, "bench " + engine32 + " -b 1 -p 40 -g 9 --iterations 1 --warmup 0 --json");
  ASSERT_EQ(bench32.exit_code, 0) << bench32.err;
  EXPECT_EQ(nlohmann::json::parse(bench32.out)["kv_cache_bytes"].get<int64_t>(), 3 * 16 * 1280) << bench32.out;
}

TEST(KvFp16Cli, UnknownKvCacheInTheEngineIsOneErrorLine) {
  TempDir dir;
  const std::string engine = dir.file("bf16.kiln");
  const Outcome b = kiln(dir, "build " + kStories + " --tokenizer " + kStoriesTok + " --dtype bf16 --max-seq-len 64 -o " + engine);
  ASSERT_EQ(b.exit_code, 0) << b.err;
  patch_metadata(engine, R"("kv_cache":{"dtype":"fp16"})", R"("kv_cache":{"dtype":"fp17"})");
  const Outcome r = kiln(dir, "run " + engine + " --no-verify -p 'Once' -n 4");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "kiln: error: " + engine + R"(: engine metadata: build.kv_cache {"dtype":"fp17"} is not a KV cache this )"
                   "kiln knows (fp32, fp16, or int8 with per_token_head scales): rebuild the engine with this kiln\n");
  const Outcome i = kiln(dir, "inspect " + engine);  // the stale checksum is refused first
  EXPECT_EQ(i.exit_code, 1);
  EXPECT_EQ(std::count(i.err.begin(), i.err.end(), '\n'), 1) << i.err;
}

// A copy of tiny-llama whose config says max_position_embeddings = `context`.
std::string tiny_llama_with_context(const TempDir& dir, int64_t context) {
  const std::string src = shared_path("fixtures/hf-tiny/tiny-llama"), dst = dir.file("tiny-llama-" + std::to_string(context));
  std::filesystem::create_directories(dst);
  for (const char* f : {"model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"}) {
    std::filesystem::copy_file(src + "/" + f, dst + "/" + f);
  }
  nlohmann::json config = testing::read_json(src + "/config.json");
  config["max_position_embeddings"] = context;
  std::ofstream(dst + "/config.json") << config.dump(2);
  return dst;
}

int64_t resident_bytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  }
  return -1;
}

TEST(KvCapacity, DefaultIsTheModelContextAndLongerIsAWarning) {
  TempDir dir;
  const std::string model = tiny_llama_with_context(dir, 8192);
  BuildOptions options = options_for(dir, model, "", "fp16", "auto");
  options.max_seq_len = 0;  // the default
  auto report = build_engine(options);
  ASSERT_TRUE(report.ok()) << report.error().message;
  EXPECT_TRUE(report->warnings.empty());
  auto engine = load_engine(options.output_path, LoadOptions{});
  ASSERT_TRUE(engine.ok());
  EXPECT_EQ(engine->metadata.at("profile").at("max_seq_len"), 8192);  // not capped at 4096
  // kiln run's cache: one sequence of the whole context.
  auto one = load(options.output_path, 1);
  ASSERT_TRUE(one);
  // tiny-llama: 2 layers x 2 kv heads x head_dim 16 x 2 (K, V) x 2 bytes = 256 bytes per token.
  EXPECT_EQ(one->backend().kv_cache_bytes(), 8192 * 256);

  // cuda keeps its default at most 4096 (its attention workspaces are planned for the max length).
  BuildOptions cuda = options_for(dir, model, "", "fp16", "auto", "cuda");
  cuda.max_seq_len = 0;
  ASSERT_TRUE(build_engine(cuda).ok());
  EXPECT_EQ(load_engine(cuda.output_path, LoadOptions{})->metadata.at("profile").at("max_seq_len"), 4096);

  // Past the context: allowed (as transformers allows it for RoPE models), with a warning line.
  const Outcome b = kiln(dir, "build " + model + " --dtype fp16 --max-seq-len 16384 -o " + dir.file("long.kiln"));
  ASSERT_EQ(b.exit_code, 0) << b.err;
  EXPECT_EQ(b.err.substr(0, b.err.find('\n') + 1),
            "kiln: warning: max sequence length 16384 exceeds the model's context of 8192 positions "
            "(max_position_embeddings): quality past 8192 is not what it was trained for\n");
  const Outcome r = kiln(dir, "run " + dir.file("long.kiln") + " -p 'Hello' -n 4 --temperature 0");
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

TEST(KvCapacity, ALongContextCacheIsCommittedOnlyAsItIsWritten) {
  TempDir dir;
  // 2 sequences of 2^20 positions at 256 bytes per token: 512 MiB of KV cache reserved.
  BuildOptions options = options_for(dir, shared_path("fixtures/hf-tiny/tiny-llama"), "", "fp16", "auto");
  options.max_seq_len = int64_t{1} << 20;
  auto report = build_engine(options);
  ASSERT_TRUE(report.ok()) << report.error().message;
  ASSERT_EQ(report->warnings.size(), 1u);  // past the fixture's 512 positions
  const int64_t before = resident_bytes();
  auto model = load(options.output_path, 2);
  ASSERT_TRUE(model);
  ASSERT_EQ(model->backend().kv_cache_bytes(), int64_t{2} << 28);
  const auto result = testing::greedy(*model, {1, 450, 4274}, 32);
  EXPECT_EQ(result.ids.size(), 32u);
  // What grew: the RoPE tables for 2^20 positions (64 MiB), the arena and the few KV pages written.
  const int64_t grown = resident_bytes() - before;
  std::printf("[ long context ] KV cache %.0f MiB reserved, resident memory grew by %.1f MiB\n",
              model->backend().kv_cache_bytes() / 1048576.0, grown / 1048576.0);
  EXPECT_LT(grown, int64_t{256} << 20);
}

}  // namespace
}  // namespace kiln
