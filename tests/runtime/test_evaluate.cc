// runtime/evaluate: the window plan scores every token but the first exactly once; perplexity equals
// an NLL computed here from Backend::forward's logits and tools/eval_reference.py's float64 golden
// (tests/golden/stories260K_ppl.json on GPL-3); an engine compared with itself differs by nothing,
// fp32 and bf16 by a little; bad input is an error.
#include "runtime/evaluate.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "test_util.h"

namespace kiln {
namespace {

using testing::read_json;
using testing::sha256_of;
using testing::slurp;
using testing::shared_path;
using testing::source_path;
using testing::TempDir;

constexpr const char* kGpl3 = "/usr/share/common-licenses/GPL-3";

// FNV-1a 64 over the ids as int32 little-endian bytes, as tools/eval_reference.py writes it.
std::string fnv1a64(const std::vector<int32_t>& ids) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (int32_t id : ids) {
    const uint32_t u = static_cast<uint32_t>(id);
    for (int b = 0; b < 4; ++b) h = (h ^ ((u >> (8 * b)) & 0xff)) * 0x100000001b3ull;
  }
  return fmt::format("{:016x}", h);
}

TEST(EvalPlanWindows, ScoresEveryTokenButTheFirstOnce) {
  for (int64_t n : {2, 3, 10, 63, 64, 65, 100, 301, 1000}) {
    for (int64_t window : {2, 3, 7, 37, 64, 512}) {
      for (int64_t stride : {int64_t{1}, window / 2, window - 1, window}) {
        if (stride < 1) continue;
        SCOPED_TRACE(fmt::format("n {} window {} stride {}", n, window, stride));
        const std::vector<EvalWindow> windows = plan_windows(n, window, stride);
        ASSERT_FALSE(windows.empty());
        int64_t next_target = 1, scored = 0;
        for (const EvalWindow& w : windows) {
          EXPECT_EQ(w.first_target, next_target);     // contiguous, no token twice
          EXPECT_GT(w.first_target, w.begin);         // a position before the first target
          EXPECT_LE(w.end - w.begin, window);
          EXPECT_LE(w.end - w.first_target, window - 1);
          EXPECT_GT(w.end, w.first_target);
          if (&w != &windows.front()) {
            EXPECT_EQ(w.end - w.begin, window);       // later windows keep a full context
            EXPECT_LE(w.end - w.first_target, std::min(stride, window - 1));
          }
          scored += w.end - w.first_target;
          next_target = w.end;
        }
        EXPECT_EQ(next_target, n);
        EXPECT_EQ(scored, n - 1);
      }
    }
  }
}

TEST(EvalPlanWindows, ExamplesWrittenOut) {
  auto flat = [](const std::vector<EvalWindow>& ws) {
    std::vector<int64_t> out;
    for (const EvalWindow& w : ws) out.insert(out.end(), {w.begin, w.end, w.first_target});
    return out;
  };
  // stride == window: adjacent windows share their boundary token as context.
  EXPECT_EQ(flat(plan_windows(10, 4, 4)), (std::vector<int64_t>{0, 4, 1, 3, 7, 4, 6, 10, 7}));
  EXPECT_EQ(flat(plan_windows(10, 4, 2)), (std::vector<int64_t>{0, 4, 1, 2, 6, 4, 4, 8, 6, 6, 10, 8}));
  EXPECT_EQ(flat(plan_windows(11, 4, 2)), (std::vector<int64_t>{0, 4, 1, 2, 6, 4, 4, 8, 6, 6, 10, 8, 7, 11, 10}));
  EXPECT_EQ(flat(plan_windows(3, 8, 4)), (std::vector<int64_t>{0, 3, 1}));
  EXPECT_TRUE(plan_windows(1, 8, 4).empty());
}

TEST(EvalResolveOptions, DefaultsAndRanges) {
  auto o = resolve_eval_options({}, 2048);
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->window, 512);
  EXPECT_EQ(o->stride, 256);
  o = resolve_eval_options({}, 64);
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->window, 64);
  EXPECT_EQ(o->stride, 32);
  o = resolve_eval_options({.window = 3}, 64);
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->stride, 1);
  EXPECT_FALSE(resolve_eval_options({.window = 1}, 64).ok());
  EXPECT_FALSE(resolve_eval_options({.window = 65}, 64).ok());
  EXPECT_FALSE(resolve_eval_options({.window = 8, .stride = 9}, 64).ok());
  EXPECT_FALSE(resolve_eval_options({.window = 8, .stride = -1}, 64).ok());
  EXPECT_NE(resolve_eval_options({.window = 8, .stride = 9}, 64).error().message.find("stride 9 exceeds the window 8"),
            std::string::npos);
}

class Evaluate : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    fp32_path_ = build("fp32");
    bf16_path_ = build("bf16");
  }
  static void TearDownTestSuite() { delete dir_; }

  static std::string build(const std::string& dtype) {
    BuildOptions options;
    options.model_path = shared_path("models/stories260K/stories260K.bin");
    options.tokenizer_path = shared_path("models/stories260K/tok512.bin");
    options.output_path = dir_->file(dtype + ".kiln");
    options.dtype = dtype;
    auto report = build_engine(options);
    EXPECT_TRUE(report.ok()) << (report.ok() ? "" : report.error().message);
    return options.output_path;
  }
  static std::unique_ptr<Model> load(const std::string& path, int64_t max_logit_rows = 512, int64_t max_step_tokens = 512) {
    RuntimeOptions runtime;
    runtime.backend_options.num_threads = 2;
    runtime.backend_options.max_sequences = 1;
    runtime.backend_options.max_logit_rows = max_logit_rows;
    runtime.backend_options.max_tokens_per_step = max_step_tokens;
    auto model = Model::load(path, runtime);
    EXPECT_TRUE(model.ok()) << (model.ok() ? "" : model.error().message);
    return model.ok() ? std::move(model).value() : nullptr;
  }
  static std::vector<int32_t> gpl3_tokens(const Model& model, size_t count) {
    std::vector<int32_t> ids = model.tokenizer()->encode(slurp(kGpl3), /*add_bos=*/true);
    if (ids.size() > count) ids.resize(count);
    return ids;
  }

  static TempDir* dir_;
  static std::string fp32_path_, bf16_path_;
};
TempDir* Evaluate::dir_ = nullptr;
std::string Evaluate::fp32_path_, Evaluate::bf16_path_;

TEST_F(Evaluate, EqualsTheNllOfOneForwardWithEveryLogit) {
  auto model = load(fp32_path_);
  ASSERT_TRUE(model);
  const std::vector<int32_t> tokens = gpl3_tokens(*model, 300);
  ASSERT_EQ(tokens.size(), 300u);
  ASSERT_EQ(tokens[0], 1);  // BOS

  // One step of all 300 positions, logits for every one; NLL of tokens 1..299 in double here.
  Backend& backend = model->backend();
  const int64_t vocab = backend.vocab_size();
  const int64_t block_size = backend.kv_geometry().block_size;
  Batch batch;
  batch.max_blocks_per_seq = static_cast<int32_t>((300 + block_size - 1) / block_size);
  for (int32_t b = 0; b < batch.max_blocks_per_seq; ++b) batch.block_tables.push_back(*model->kv_pool().allocate());
  for (int32_t p = 0; p < 300; ++p) {
    batch.tokens.push_back(tokens[p]);
    batch.positions.push_back(p);
    batch.token_seq.push_back(0);
    batch.logit_rows.push_back(p);
  }
  std::vector<float> logits(300 * vocab);
  ASSERT_TRUE(backend.forward(batch, logits.data()).ok());
  for (int32_t b : batch.block_tables) model->kv_pool().free(b);
  double nll = 0;
  for (int64_t p = 0; p + 1 < 300; ++p) {
    const float* row = logits.data() + p * vocab;
    double sum = 0;
    for (int64_t i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(row[i]));
    nll += std::log(sum) - row[tokens[p + 1]];
  }

  // A window holding the whole sequence scores the same 299 tokens; the evaluator runs it in one
  // step of 299 positions (the last needs no logits) here, in steps of at most 32 tokens and 16
  // logit rows in the second model. Tolerance: fp32 logits of different step shapes, summed in double.
  auto chunked = load(fp32_path_, 16, 32);
  ASSERT_TRUE(chunked);
  for (Model* m : {model.get(), chunked.get()}) {
    auto report = evaluate_perplexity(*m, tokens, {.window = 300, .stride = 150, .bos_id = 1});
    ASSERT_TRUE(report.ok()) << report.error().message;
    EXPECT_EQ(report->windows, 1);
    EXPECT_EQ(report->scored, 299);
    EXPECT_EQ(report->positions, 299);
    EXPECT_NEAR(report->nll_sum, nll, 1e-6 * nll);
    EXPECT_NEAR(report->perplexity, std::exp(nll / 299), 1e-6 * report->perplexity);
    EXPECT_EQ(m->kv_pool().num_free(), m->kv_pool().num_blocks());  // blocks given back
  }
}

TEST_F(Evaluate, ScoredTokensAreTokensMinusOneForAnyStride) {
  auto model = load(fp32_path_, 24, 40);  // steps split by both the token budget and the logit rows
  ASSERT_TRUE(model);
  const std::vector<int32_t> tokens = gpl3_tokens(*model, 301);
  double previous = 0;
  for (const auto& [window, stride] : std::vector<std::pair<int64_t, int64_t>>{{64, 64}, {64, 63}, {64, 16}, {2, 1}, {2, 2}, {512, 256}}) {
    SCOPED_TRACE(fmt::format("window {} stride {}", window, stride));
    std::vector<EvalProgress> seen;
    auto report = evaluate_perplexity(*model, tokens, {.window = window, .stride = stride, .bos_id = 1},
                                      [&](const EvalProgress& p) { seen.push_back(p); });
    ASSERT_TRUE(report.ok()) << report.error().message;
    EXPECT_EQ(report->scored, 300);
    EXPECT_EQ(report->tokens, 301);
    EXPECT_EQ(report->windows, static_cast<int64_t>(plan_windows(301, window, stride).size()));
    ASSERT_FALSE(seen.empty());
    EXPECT_EQ(seen.back().scored, 300);
    EXPECT_EQ(seen.back().total, 300);
    EXPECT_DOUBLE_EQ(seen.back().nll_sum, report->nll_sum);
    for (size_t i = 1; i < seen.size(); ++i) EXPECT_GT(seen[i].scored, seen[i - 1].scored);
    EXPECT_GT(report->perplexity, 1.0);
    EXPECT_TRUE(std::isfinite(report->perplexity));
    // Context helps a trained model: a window of 2 predicts every token from BOS alone (its first
    // position), a window of 512 from everything before it.
    if (window == 512) {
      EXPECT_LT(report->mean_nll, previous);
    }
    previous = report->mean_nll;
    EXPECT_EQ(model->kv_pool().num_free(), model->kv_pool().num_blocks());
  }
}

TEST_F(Evaluate, MatchesTheFloat64GoldenOnGpl3) {
  const nlohmann::json golden = read_json(source_path("tests/golden/stories260K_ppl.json"));
  const std::string sha = sha256_of(kGpl3);
  ASSERT_EQ(sha, golden["text_sha256"].get<std::string>())
      << kGpl3 << " is not the text tests/golden/stories260K_ppl.json was made from (sha256 " << sha
      << "): this machine's base-files ships another GPL-3; regenerate the golden with tools/eval_reference.py golden";
  auto model = load(fp32_path_);
  ASSERT_TRUE(model);
  const std::vector<int32_t> all = gpl3_tokens(*model, SIZE_MAX);
  ASSERT_EQ(static_cast<int64_t>(all.size()), golden["tokens"].get<int64_t>()) << "tokenization differs from run.c's";
  EXPECT_EQ(fnv1a64(all), golden["token_ids_fnv1a64"].get<std::string>()) << "tokenization differs from run.c's";
  EXPECT_EQ(std::vector<int32_t>(all.begin(), all.begin() + 32), golden["first_ids"].get<std::vector<int32_t>>());
  ASSERT_EQ(golden["cases"].size(), 4u);
  for (const auto& c : golden["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    std::vector<int32_t> tokens = all;
    if (!c["max_tokens"].is_null()) tokens.resize(c["max_tokens"].get<size_t>());
    const EvalOptions options{.window = c["window"].get<int64_t>(), .stride = c["stride"].get<int64_t>(),
                              .bos_id = golden["bos_id"].get<int32_t>()};
    auto report = evaluate_perplexity(*model, tokens, options);
    ASSERT_TRUE(report.ok()) << report.error().message;
    EXPECT_EQ(report->windows, c["windows"].get<int64_t>());
    EXPECT_EQ(report->scored, c["scored"].get<int64_t>());
    // fp32 against float64: the logits agree to ~1e-5 (tests/runtime/test_parity.cc), the mean of
    // thousands of NLLs far closer than the 1e-4 asked for.
    const double mean = c["mean_nll"], ppl = c["perplexity"];
    EXPECT_NEAR(report->mean_nll, mean, 1e-4 * mean);
    EXPECT_NEAR(report->perplexity, ppl, 1e-4 * ppl);
  }
}

TEST_F(Evaluate, AnEngineComparedWithItselfDiffersByNothing) {
  auto a = load(fp32_path_), b = load(fp32_path_, 20, 48);  // other step shapes: same logits per row
  ASSERT_TRUE(a && b);
  const std::vector<int32_t> text = gpl3_tokens(*a, 400);
  const std::vector<std::vector<int32_t>> sequences = {
      text, a->tokenizer()->encode("Once upon a time, there was a little girl named Lily.", true), {1}, {}};
  auto report = compare_engines(*a, *a, sequences, {.window = 128, .stride = 64, .bos_id = 1});
  ASSERT_TRUE(report.ok()) << report.error().message;
  EXPECT_EQ(report->sequences, 2);  // {1} and {} have nothing to score
  EXPECT_EQ(report->scored, static_cast<int64_t>(sequences[0].size() + sequences[1].size()) - 2);
  EXPECT_EQ(report->kl_mean, 0.0);
  EXPECT_EQ(report->kl_max, 0.0);
  EXPECT_EQ(report->top1_agreement, 1.0);
  EXPECT_EQ(report->max_abs_logit_diff, 0.0);
  EXPECT_EQ(report->reference_perplexity, report->other_perplexity);
  // Its perplexity is the perplexity evaluator's on the first sequence alone.
  auto one = compare_engines(*a, *b, {text}, {.window = 128, .stride = 64, .bos_id = 1});
  auto ppl = evaluate_perplexity(*a, text, {.window = 128, .stride = 64, .bos_id = 1});
  ASSERT_TRUE(one.ok() && ppl.ok());
  EXPECT_NEAR(one->reference_perplexity, ppl->perplexity, 1e-6 * ppl->perplexity);
  EXPECT_LT(one->max_abs_logit_diff, 1e-4);
  EXPECT_LT(one->kl_max, 1e-9);
  EXPECT_EQ(one->top1_agreement, 1.0);
  EXPECT_EQ(a->kv_pool().num_free(), a->kv_pool().num_blocks());
  EXPECT_EQ(b->kv_pool().num_free(), b->kv_pool().num_blocks());
}

TEST_F(Evaluate, Bf16DiffersFromFp32ByALittle) {
  auto fp32 = load(fp32_path_), bf16 = load(bf16_path_);
  ASSERT_TRUE(fp32 && bf16);
  const std::vector<int32_t> text = gpl3_tokens(*fp32, 1000);
  auto report = compare_engines(*fp32, *bf16, {text}, {.window = 256, .stride = 128, .bos_id = 1});
  ASSERT_TRUE(report.ok()) << report.error().message;
  EXPECT_EQ(report->scored, 999);
  EXPECT_GT(report->kl_mean, 0.0);
  EXPECT_LT(report->kl_mean, 1e-2);
  EXPECT_LE(report->kl_mean, report->kl_p99);
  EXPECT_LE(report->kl_p99, report->kl_max);
  EXPECT_GT(report->max_abs_logit_diff, 0.0);
  EXPECT_GT(report->top1_agreement, 0.9);
  EXPECT_NEAR(report->other_perplexity, report->reference_perplexity, 0.05 * report->reference_perplexity);
}

TEST_F(Evaluate, RefusesBadInput) {
  auto model = load(fp32_path_);
  ASSERT_TRUE(model);
  auto one = evaluate_perplexity(*model, {1}, {});
  ASSERT_FALSE(one.ok());
  EXPECT_NE(one.error().message.find("at least 2"), std::string::npos) << one.error().message;
  auto bad_id = evaluate_perplexity(*model, {1, 512}, {});
  ASSERT_FALSE(bad_id.ok());
  EXPECT_NE(bad_id.error().message.find("512"), std::string::npos) << bad_id.error().message;
  auto too_long = evaluate_perplexity(*model, {1, 2, 3}, {.window = 513});
  ASSERT_FALSE(too_long.ok());
  EXPECT_NE(too_long.error().message.find("max sequence length 512"), std::string::npos) << too_long.error().message;
  EXPECT_FALSE(evaluate_perplexity(*model, {1, 2, 3}, {.window = 8, .stride = 9}).ok());
  EXPECT_FALSE(compare_engines(*model, *model, {{1}}, {}).ok());  // nothing to compare

  // A KV pool too small for one window is an error, not a crash.
  RuntimeOptions small;
  small.backend_options.num_kv_blocks = 2;
  auto tiny_pool = Model::load(fp32_path_, small);
  ASSERT_TRUE(tiny_pool.ok());
  auto r = evaluate_perplexity(**tiny_pool, gpl3_tokens(**tiny_pool, 100), {.window = 64});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("KV blocks"), std::string::npos) << r.error().message;
}

TEST_F(Evaluate, CompareRefusesAnotherVocabulary) {
  BuildOptions options;
  options.model_path = shared_path("fixtures/hf-tiny/tiny-llama");
  options.output_path = dir_->file("tiny-llama.kiln");
  options.dtype = "fp32";
  ASSERT_TRUE(build_engine(options).ok());
  auto llama = load(options.output_path, 64);
  auto stories = load(fp32_path_);
  ASSERT_TRUE(llama && stories);
  auto r = compare_engines(*stories, *llama, {{1, 2, 3}}, {});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("different vocabularies (512 and 32000 tokens)"), std::string::npos) << r.error().message;
}

}  // namespace
}  // namespace kiln
