// kiln against llama.cpp itself on the same GGUF files (tests/golden/llamacpp_gguf.json, written by
// tools/make_llamacpp_golden.py with llama-cpp-python 0.3.36 built from source; CI never builds
// llama.cpp). The files: SmolLM2-135M-Instruct.Q4_1.gguf (tools/make_gguf_golden.py fetch) and the
// fixtures of tools/make_gguf_fixtures.py, made here again with the pinned gguf-py and numpy of
// tools/fetch_smollm2.sh's venv and checked byte for byte (sha256) against the files llama.cpp ran:
// the hf-tiny llama and qwen2 in F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1, a 256-wide llama in Q2_K Q3_K
// Q4_K Q5_K Q6_K, SmolLM2 dequantized to F16, and SmolLM2's vocabulary alone under the llama-bpe and
// qwen2 pre-tokenizers.
//   - Tokenization: the 2,000-string corpus (tests/tokenizer/data/corpus.json) plus strings around each
//     vocabulary's control tokens, as llama_tokenize(add_bos false, parse_special true); the GPL-3 ids.
//   - Last-position logits of a prompt within the relative L2 derived below; greedy ids equal up to
//     the first step whose llama.cpp margin is too small to call; sliding-window perplexity on
//     /usr/share/common-licenses/GPL-3 within 1% of llama.cpp's.
//
// The expected gap. kiln's CPU path keeps activations in f32 (an fp16 / bf16 engine rounds them to its
// dtype between ops) and dequantizes weights exactly; llama.cpp's CPU path does not: it stores the KV
// cache as F16 and converts a matrix's input activations to the weight type's vec_dot type before the
// dot product: F32 weights keep F32, F16 -> F16, BF16 -> BF16, Q4_0..Q8_0 -> Q8_0 (int8 per block of
// 32, scale max|x| / 127), k-quants -> Q8_K (int8 per block of 256). Each rounding adds relative noise
// to a matrix output of about u / sqrt(3) times (max|x| / rms x) for int8 (u = 1/254) or u / sqrt(3) for
// floats (u = 2^-11 F16, 2^-8 BF16); through ~7 matrices per layer, the layers and the LM head these
// add in quadrature, and the logits' relative L2 is of the order of that per-matrix noise times
// sqrt(matrices) ~ 4:
//   F32 (F16 KV only): ~2.8e-4 * 4 ~ 1e-3      F16: ~1e-3 + KV ~ 2e-3      BF16: ~2.3e-3 * 4 ~ 1e-2
//   Q8_0 activations (max/rms ~ 2.5 over 32): ~5.7e-3 * 4 ~ 2.3e-2
//   Q8_K activations (max/rms ~ 3.3 over 256): ~7.5e-3 * 4 ~ 3e-2
// The bounds are twice these estimates; the measured values are printed and recorded in
// docs/QUANTIZATION.md.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "backend/cpu/isa.h"
#include "compiler/build_engine.h"
#include "format/gguf.h"
#include "format/gguf_model.h"
#include "runtime/evaluate.h"
#include "runtime/parity_checks.h"
#include "test_util.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using testing::read_json;
using testing::sha256_of;
using testing::slurp;
using testing::source_path;
using testing::TempDir;

constexpr const char* kGpl3 = "/usr/share/common-licenses/GPL-3";

std::string q(const std::string& s) { return "'" + s + "'"; }  // paths here hold no single quote

// Runs a shell command; its stdout, or an error with the last line of its stderr.
std::string run(const std::string& command, const TempDir& dir, std::string& error) {
  const std::string out = dir.file("cmd.out"), err = dir.file("cmd.err");
  const int status = std::system((command + " >" + out + " 2>" + err + " </dev/null").c_str());
  if (status != 0) {
    std::string e = slurp(err);
    while (!e.empty() && e.back() == '\n') e.pop_back();
    error = command + ": " + e.substr(e.rfind('\n') + 1);
  }
  return slurp(out);
}

std::string cache_root() {
  if (const char* c = std::getenv("KILN_CACHE_DIR"); c && *c) return c;
  const char* home = std::getenv("HOME");
  return std::string(home ? home : "/tmp") + "/.cache/kiln";
}

// The bound on the relative L2 of the last-position logits for a file of this weight type (derivation
// at the top).
double logit_bound(const std::string& name) {
  if (name.ends_with("-f32")) return 2e-3;
  if (name.ends_with("-f16")) return 4e-3;
  if (name.ends_with("-bf16")) return 2e-2;
  if (name.ends_with("_k")) return 6e-2;
  return 4.6e-2;  // Q8_0 / Q4_0 / Q4_1 / Q5_0 / Q5_1 and SmolLM2's Q4_1 (with one Q8_0 matrix)
}

// |log(ppl kiln / ppl llama.cpp)| allowed: 1% for the real model and wherever llama.cpp keeps
// activations in floating point. The random-weight fixtures whose activations llama.cpp quantizes to
// int8 are far from a language model (perplexity 5e4 to 2e19 on English prose: the target's log-
// probability sits deep in the tail, where a logit error of ~bound x std moves it): there the mean NLL
// may move by a quarter of that per-logit error.
double perplexity_tolerance(const std::string& name, double logit_std) {
  const bool float_activations = name.ends_with("f32") || name.ends_with("f16") || name.ends_with("bf16");
  if (name.starts_with("smollm2") || float_activations) return std::log(1.01);
  return std::max(std::log(1.01), logit_bound(name) * logit_std / 4);
}

// Fixtures live in ${KILN_CACHE_DIR:-~/.cache/kiln}/gguf-fixtures (as tools/make_llamacpp_golden.py keeps
// them); one whose sha256 is not the golden's is made again. gtest_discover_tests runs every test in
// its own process, so each makes (or reuses) only the files it needs.
class LlamaCpp : public ::testing::Test {
 public:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    golden_ = new nlohmann::json(read_json(source_path("tests/golden/llamacpp_gguf.json")));
  }
  static void TearDownTestSuite() {
    delete dir_;
    delete golden_;
    models_.clear();
  }

 protected:
  // The path of file `name` with the sha256 llama.cpp ran on, or an error.
  static std::string gguf_path(const std::string& name, std::string& error) {
    if (name == "smollm2-q4_1") return testing::smollm2_gguf(*dir_, error);  // sha256-checked by the fetch
    const std::string dir = cache_root() + "/gguf-fixtures", path = dir + "/" + name + ".gguf";
    const std::string want = expected_sha256(name);
    if (fs::exists(path) && sha256_of(path) == want) return path;
    std::string extra;
    if (name.starts_with("smollm2-")) {  // made from the Q4_1 file
      const std::string q4_1 = gguf_path("smollm2-q4_1", error);
      if (!error.empty()) return "";
      extra = " --smollm2 " + q(q4_1);
    }
    // The venv with the pinned gguf-py and numpy (tools/fetch_smollm2.sh makes it; install_deps --test runs it).
    run("bash " + q(source_path("tools/fetch_smollm2.sh")), *dir_, error);
    if (!error.empty()) return "";
    const char* venv = std::getenv("KILN_GGUF_VENV");
    const std::string python = (venv && *venv ? std::string(venv) : cache_root() + "/venv-gguf") + "/bin/python";
    run(q(python) + " " + q(source_path("tools/make_gguf_fixtures.py")) + " " + q(dir) + " --shared " +
            q(testing::shared_path("")) + extra + " --only " + name,
        *dir_, error);
    if (!error.empty()) return "";
    if (const std::string got = sha256_of(path); got != want) {
      error = name + ": tools/make_gguf_fixtures.py made a file of sha256 " + got + ", llama.cpp ran on " + want +
              " (gguf-py / numpy versions, or the generator changed: rerun tools/make_llamacpp_golden.py)";
    }
    return path;
  }
  static std::string expected_sha256(const std::string& name) {
    if (name.starts_with("smollm2-vocab-")) {
      return (*golden_)["vocabularies"]["smollm2-" + name.substr(std::string("smollm2-vocab-").size())]["sha256"];
    }
    return (*golden_)["files"][name]["sha256"];
  }
  // Engines are built once per file, dtype and process.
  static Model* model(const std::string& name, const std::string& dtype = "auto") {
    auto& slot = models_[name + "@" + dtype];
    if (!slot) {
      std::string error;
      const std::string path = gguf_path(name, error);
      EXPECT_TRUE(error.empty()) << error;
      if (!error.empty()) return nullptr;
      slot = testing::build_and_load(*dir_, path, dtype);
    }
    return slot.get();
  }

  static TempDir* dir_;
  static nlohmann::json* golden_;
  static std::map<std::string, std::unique_ptr<Model>> models_;
};
TempDir* LlamaCpp::dir_ = nullptr;
nlohmann::json* LlamaCpp::golden_ = nullptr;
std::map<std::string, std::unique_ptr<Model>> LlamaCpp::models_;

TEST_F(LlamaCpp, EveryFixtureHasAGoldenAndTheProseIsTheSame) {
  size_t fixtures = 0;
  for (const auto& [name, file] : (*golden_)["files"].items()) {
    if (name == "smollm2-q4_1") continue;
    ++fixtures;
    EXPECT_EQ(file["sha256"].get<std::string>().size(), 64u) << name;
  }
  EXPECT_EQ(fixtures, 22u) << "8 types x hf-tiny llama and qwen2, 5 k-quants, SmolLM2 as F16";
  for (const char* v : {"llama-spm", "smollm2", "smollm2-llama-bpe", "smollm2-qwen2"}) {
    EXPECT_TRUE((*golden_)["vocabularies"].contains(v)) << v;
  }
  EXPECT_EQ(static_cast<int64_t>(fs::file_size(kGpl3)), (*golden_)["gpl3_bytes"].get<int64_t>())
      << kGpl3 << " is not the file llama.cpp's perplexity was measured on";
}

void expect_tokenization(const Tokenizer* tokenizer, const nlohmann::json& vocabulary, const std::string& what) {
  ASSERT_NE(tokenizer, nullptr);
  std::vector<std::string> strings = read_json(source_path("tests/tokenizer/data/corpus.json")).get<std::vector<std::string>>();
  ASSERT_GE(strings.size(), 2000u);
  for (const auto& s : vocabulary["extra_strings"]) strings.push_back(s.get<std::string>());
  const auto& expected = vocabulary["ids"];
  ASSERT_EQ(expected.size(), strings.size());
  int mismatches = 0;
  for (size_t i = 0; i < strings.size(); ++i) {
    const std::vector<int32_t> got = tokenizer->encode(strings[i], /*add_bos=*/false);
    const auto want = expected[i].get<std::vector<int32_t>>();
    if (got != want && ++mismatches <= 8) {
      ADD_FAILURE() << what << ": string " << i << " " << nlohmann::json(strings[i]).dump() << ": kiln "
                    << nlohmann::json(got).dump() << ", llama.cpp " << nlohmann::json(want).dump();
    }
  }
  EXPECT_EQ(mismatches, 0) << what << ": of " << strings.size() << " strings";
  std::vector<int32_t> gpl3 = tokenizer->encode(slurp(kGpl3), vocabulary["add_bos"].get<bool>());
  const auto want = vocabulary["gpl3_ids"].get<std::vector<int32_t>>();
  ASSERT_GE(gpl3.size(), want.size());
  gpl3.resize(want.size());
  EXPECT_EQ(gpl3, want) << what << ": GPL-3";
}

TEST_F(LlamaCpp, LlamaVocabularyTokenizesAsLlamaCpp) {
  Model* m = model("tiny-llama-f32");
  ASSERT_NE(m, nullptr);
  expect_tokenization(m->tokenizer(), (*golden_)["vocabularies"]["llama-spm"], "llama-spm");
}

TEST_F(LlamaCpp, SmolLM2VocabularyTokenizesAsLlamaCpp) {
  Model* m = model("smollm2-q4_1");
  ASSERT_NE(m, nullptr);
  expect_tokenization(m->tokenizer(), (*golden_)["vocabularies"]["smollm2"], "smollm2");
}

// SmolLM2's tokens and merges under tokenizer.ggml.pre llama-bpe (Llama 3's split, ignore_merges) and
// qwen2 (single digits): vocabulary-only files, tokenized through the tokenizer kiln rebuilds from them.
TEST_F(LlamaCpp, Llama3AndQwen2PreTokenizersTokenizeAsLlamaCpp) {
  for (const std::string pre : {"llama-bpe", "qwen2"}) {
    std::string error;
    const std::string path = gguf_path("smollm2-vocab-" + pre, error);
    ASSERT_TRUE(error.empty()) << error;
    auto file = open_gguf(path);
    ASSERT_TRUE(file.ok()) << file.error().message;
    auto parts = gguf_tokenizer(*file);
    ASSERT_TRUE(parts.ok()) << parts.error().message;
    auto tokenizer = Tokenizer::from_bytes(parts->first, parts->second);
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.error().message;
    expect_tokenization(&*tokenizer, (*golden_)["vocabularies"]["smollm2-" + pre], "smollm2 with pre " + pre);
  }
}

class LlamaCppFile : public LlamaCpp, public ::testing::WithParamInterface<std::string> {};

TEST_P(LlamaCppFile, LogitsGreedyAndPerplexity) {
  const std::string name = GetParam();
  const auto& g = (*golden_)["files"][name];
  Model* m = model(name);
  ASSERT_NE(m, nullptr);
  const auto prompt = g["prompt_ids"].get<std::vector<int32_t>>();
  const std::vector<float> last = testing::all_position_logits(*m, prompt).back();
  ASSERT_EQ(static_cast<int64_t>(last.size()), m->backend().vocab_size());

  // Relative L2 of the centred logits (each vector less its mean over the whole vocabulary: a shift of
  // every logit changes no probability, and llama.cpp's rounding shifts them, by 0.6 on SmolLM2 Q4_1)
  // over llama.cpp's sampled ids (every 64th and its top 64).
  const auto ids = g["logit_ids"].get<std::vector<int32_t>>();
  const auto want = g["logits"].get<std::vector<double>>();
  double mean = 0;
  for (float v : last) mean += v;
  mean /= static_cast<double>(last.size());
  const double want_mean = g["logit_mean"];
  double num = 0, den = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    const double a = last[static_cast<size_t>(ids[i])] - mean, b = want[i] - want_mean;
    num += (a - b) * (a - b);
    den += b * b;
  }
  const double rel = std::sqrt(num / den);
  const double bound = logit_bound(name);
  EXPECT_LE(rel, bound) << name << ": last-position logits vs llama.cpp";
  const int64_t top1 = std::max_element(last.begin(), last.end()) - last.begin();

  // Greedy: equal up to the first step whose llama.cpp margin is under 3 standard deviations of the
  // difference of two logits' errors, each error at most the bound times the logits' deviation.
  const auto greedy_ids = g["greedy_ids"].get<std::vector<int32_t>>();
  const auto margins = g["greedy_margins"].get<std::vector<double>>();
  const auto spread = g["greedy_logit_std"].get<std::vector<double>>();
  size_t comparable = greedy_ids.size();
  for (size_t i = 0; i < margins.size(); ++i) {
    if (margins[i] < 3 * std::sqrt(2.0) * bound * spread[i]) {
      comparable = i;
      break;
    }
  }
  const auto result = testing::greedy(*m, prompt, static_cast<int>(greedy_ids.size()));
  size_t equal = 0;
  while (equal < greedy_ids.size() && equal < result.ids.size() && result.ids[equal] == greedy_ids[equal]) ++equal;
  EXPECT_GE(equal, comparable) << name << ": greedy ids differ from llama.cpp's at step " << equal;

  // Perplexity under the same window plan and ids.
  const auto& p = g["perplexity"];
  const auto& vocabulary = (*golden_)["vocabularies"][g["vocabulary"].get<std::string>()];
  std::vector<int32_t> tokens = vocabulary["gpl3_ids"].get<std::vector<int32_t>>();
  tokens.resize(p["tokens"].get<size_t>());
  EvalOptions options;
  options.window = p["window"];
  options.stride = p["stride"];
  options.bos_id = vocabulary["add_bos"].get<bool>() ? tokens[0] : -1;
  auto report = evaluate_perplexity(*m, tokens, options);
  ASSERT_TRUE(report.ok()) << report.error().message;
  EXPECT_EQ(report->scored, p["scored"].get<int64_t>());
  const double ppl_ratio = report->perplexity / p["perplexity"].get<double>();
  const double ppl_tolerance = perplexity_tolerance(name, g["logit_std"]);
  EXPECT_NEAR(std::log(ppl_ratio), 0.0, ppl_tolerance)
      << name << ": perplexity kiln " << report->perplexity << ", llama.cpp " << p["perplexity"];
  std::printf("[ llama.cpp ] %-18s logits rel L2 %.2e (bound %.1e)  top1 %s  greedy %zu/%zu equal (%zu comparable)  "
              "ppl %.4g ratio %.5f (tolerance %.3f)\n",
              name.c_str(), rel, bound, top1 == g["top1"].get<int64_t>() ? "same" : "differs", equal, greedy_ids.size(),
              comparable, report->perplexity, ppl_ratio, ppl_tolerance);
}

// `--dtype bf16` on the quantized file: the quantized matrices prefill in BF16 arithmetic (weights
// dequantized to BF16, activations rounded to BF16; kernels.h), ~2.7x the f32 prefill here (on a CPU
// with AVX512_BF16, which CI's has). Still far closer to the exact model than llama.cpp's int8
// activations: prefill logits differ from the same engine's one-token steps (so the path ran) by much
// less than the llama.cpp gap, the top token is llama.cpp's, and perplexity is within 1% of llama.cpp's.
TEST_F(LlamaCpp, Bf16EngineOfTheQ4_1FilePrefillsInBf16) {
  if (!cpu::cpu_features().avx512_bf16 || !cpu::using_avx512()) GTEST_SKIP() << "no AVX512_BF16 on this CPU";
  const auto& g = (*golden_)["files"]["smollm2-q4_1"];
  Model* f32 = model("smollm2-q4_1");
  Model* bf16 = model("smollm2-q4_1", "bf16");
  ASSERT_TRUE(f32 && bf16);
  ASSERT_TRUE(bf16->backend().max_tokens_per_step() > 8);
  const auto prompt = g["prompt_ids"].get<std::vector<int32_t>>();
  ASSERT_GT(prompt.size(), 8u) << "a prefill-sized prompt";
  // The same bf16 engine one token per step runs every matrix through the f32 decode kernels: the
  // difference is the BF16 prefill's (the f32 engine's two ways agree to float rounding).
  std::string error;
  const std::string path = gguf_path("smollm2-q4_1", error);
  ASSERT_TRUE(error.empty()) << error;
  auto bf16_steps = testing::build_and_load(*dir_, path, "bf16", true, 512, 2, /*max_tokens_per_step=*/1);
  auto f32_steps = testing::build_and_load(*dir_, path, "auto", true, 512, 2, /*max_tokens_per_step=*/1);
  ASSERT_TRUE(bf16_steps && f32_steps);
  const auto rel = [](const std::vector<float>& x, const std::vector<float>& ref) {
    return testing::relative_l2(x, std::vector<double>(ref.begin(), ref.end()));
  };
  const std::vector<float> b = testing::all_position_logits(*bf16, prompt).back();
  const double bf16_prefill = rel(b, testing::all_position_logits(*bf16_steps, prompt).back());
  const double f32_prefill =
      rel(testing::all_position_logits(*f32, prompt).back(), testing::all_position_logits(*f32_steps, prompt).back());
  EXPECT_LT(f32_prefill, 1e-4);
  EXPECT_GT(bf16_prefill, 10 * f32_prefill) << "the bf16 engine's prefill computed the f32 result: BF16 prefill did not run";
  EXPECT_LT(bf16_prefill, 1e-2);
  const double to_f32 = bf16_prefill;
  const int64_t top1 = std::max_element(b.begin(), b.end()) - b.begin();
  EXPECT_EQ(top1, g["top1"].get<int64_t>());
  const auto& p = g["perplexity"];
  std::vector<int32_t> tokens = (*golden_)["vocabularies"]["smollm2"]["gpl3_ids"].get<std::vector<int32_t>>();
  tokens.resize(p["tokens"].get<size_t>());
  EvalOptions options;
  options.window = p["window"];
  options.stride = p["stride"];
  auto report = evaluate_perplexity(*bf16, tokens, options);
  ASSERT_TRUE(report.ok()) << report.error().message;
  EXPECT_NEAR(report->perplexity / p["perplexity"].get<double>(), 1.0, 0.01);
  std::printf("[ llama.cpp ] smollm2-q4_1 --dtype bf16: prefill vs decode logits rel L2 %.2e (f32 engine %.2e), ppl %.4f "
              "(llama.cpp %.4f)\n", to_f32, f32_prefill, report->perplexity, p["perplexity"].get<double>());
}

std::vector<std::string> file_names() {
  const auto golden = read_json(source_path("tests/golden/llamacpp_gguf.json"));
  std::vector<std::string> names;
  for (const auto& [name, _] : golden["files"].items()) names.push_back(name);
  return names;
}

INSTANTIATE_TEST_SUITE_P(Files, LlamaCppFile, ::testing::ValuesIn(file_names()),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string n = info.param;
                           for (char& c : n) {
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           }
                           return n;
                         });

}  // namespace
}  // namespace kiln
