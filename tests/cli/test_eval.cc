// `kiln eval` on stories260K engines: the default perplexity of GPL-3 equals the float64 golden,
// window/stride settings score every token but the first once, an engine compared with itself gives
// KL 0 and fp32 vs bf16 a small KL; bad input gives one "kiln: error:" line and exit status 1.
#include <cmath>
#include <fstream>

#include "cli_runner.h"

namespace kiln {
namespace {

using testing::kiln;
using testing::Outcome;
using testing::read_json;
using testing::shared_path;
using testing::source_path;
using testing::TempDir;

constexpr const char* kGpl3 = "/usr/share/common-licenses/GPL-3";

std::string q(const std::string& s) { return "'" + s + "'"; }

void expect_clean_error(const Outcome& o, const std::string& needle) {
  EXPECT_EQ(o.exit_code, 1) << o.err;
  EXPECT_EQ(o.err.rfind("kiln: error: ", 0), 0u) << o.err;
  EXPECT_EQ(std::count(o.err.begin(), o.err.end(), '\n'), 1) << o.err;
  EXPECT_NE(o.err.find(needle), std::string::npos) << "expected '" << needle << "' in: " << o.err;
  EXPECT_TRUE(o.out.empty()) << o.out;
}

class EvalCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    for (const char* dtype : {"fp32", "bf16"}) {
      const Outcome o = kiln(*dir_, "build " + q(shared_path("models/stories260K/stories260K.bin")) + " --tokenizer " +
                                        q(shared_path("models/stories260K/tok512.bin")) + " --dtype " + dtype + " -o " +
                                        q(dir_->file(std::string(dtype) + ".kiln")));
      ASSERT_EQ(o.exit_code, 0) << o.err;
    }
    std::ofstream(dir_->file("prompts.txt")) << "Once upon a time, there was a little girl named Lily.\n"
                                                "\n"
                                                "She loved to play outside in the park with her friends.\r\n"
                                                "One day, a big dog came and wanted to play too.\n"
                                                "Tom was sad because his toy was broken, so his mom helped him fix it.";
  }
  static void TearDownTestSuite() { delete dir_; }

  Outcome eval(const std::string& args) { return kiln(*dir_, "eval " + q(fp32()) + " -t 2 " + args); }
  static std::string fp32() { return dir_->file("fp32.kiln"); }
  static std::string bf16() { return dir_->file("bf16.kiln"); }

  static TempDir* dir_;
};
TempDir* EvalCli::dir_ = nullptr;

TEST_F(EvalCli, DefaultPerplexityOfGpl3EqualsTheGolden) {
  const nlohmann::json golden = read_json(source_path("tests/golden/stories260K_ppl.json"));
  const nlohmann::json& want = golden["cases"][0];
  ASSERT_EQ(want["name"], "defaults");
  const Outcome o = eval("--perplexity " + q(kGpl3) + " --json");
  ASSERT_EQ(o.exit_code, 0) << o.err;
  const auto r = nlohmann::json::parse(o.out);
  EXPECT_EQ(r["mode"], "perplexity");
  EXPECT_EQ(r["engine"], fp32());
  EXPECT_EQ(r["file"], kGpl3);
  EXPECT_EQ(r["backend"], "cpu");
  EXPECT_EQ(r["window"], 512);  // min(max sequence length 512, 512)
  EXPECT_EQ(r["stride"], 256);
  EXPECT_EQ(r["bos_id"], 1);
  EXPECT_TRUE(r["max_tokens"].is_null());
  EXPECT_EQ(r["file_bytes"], golden["text_bytes"]) << "another GPL-3 than the golden's (see test_evaluate)";
  EXPECT_EQ(r["tokens"], golden["tokens"]);
  EXPECT_EQ(r["windows"], want["windows"]);
  EXPECT_EQ(r["scored_tokens"], want["scored"]);
  EXPECT_NEAR(r["mean_nll"].get<double>(), want["mean_nll"].get<double>(), 1e-4 * want["mean_nll"].get<double>());
  EXPECT_NEAR(r["perplexity"].get<double>(), want["perplexity"].get<double>(), 1e-4 * want["perplexity"].get<double>());
  EXPECT_NEAR(r["perplexity"].get<double>(), std::exp(r["mean_nll"].get<double>()), 1e-9 * r["perplexity"].get<double>());
  EXPECT_NEAR(r["nll_sum"].get<double>(), r["mean_nll"].get<double>() * r["scored_tokens"].get<double>(),
              1e-9 * r["nll_sum"].get<double>());
}

TEST_F(EvalCli, EveryTokenButTheFirstIsScoredOnce) {
  for (const std::string settings : {"--window 64 --stride 64", "--window 64 --stride 16", "--window 37 --stride 10",
                                      "--window 2 --stride 2"}) {
    const Outcome o = eval("--perplexity " + q(kGpl3) + " --max-tokens 1000 --json " + settings);
    ASSERT_EQ(o.exit_code, 0) << settings << ": " << o.err;
    const auto r = nlohmann::json::parse(o.out);
    EXPECT_EQ(r["tokens"], 1000) << settings;
    EXPECT_EQ(r["max_tokens"], 1000) << settings;
    EXPECT_EQ(r["scored_tokens"], 999) << settings;
    EXPECT_GT(r["file_tokens"].get<int64_t>(), 1000) << settings;
  }
}

TEST_F(EvalCli, TableNamesTheNumbers) {
  const Outcome o = eval("--perplexity " + q(kGpl3) + " --max-tokens 300 --window 128");
  ASSERT_EQ(o.exit_code, 0) << o.err;
  for (const char* needle : {"kiln eval", "22155 tokens, first 300 used", "4 of 128 positions, stride 64", "BOS 1", "scored       299 tokens", "mean NLL",
                             "perplexity"}) {
    EXPECT_NE(o.out.find(needle), std::string::npos) << needle << " in:\n" << o.out;
  }
  EXPECT_TRUE(o.err.empty()) << o.err;  // not a terminal, and too quick for a periodic progress line
}

TEST_F(EvalCli, CompareWithItselfIsExact) {
  const Outcome o = eval("--compare " + q(fp32()) + " --prompts " + q(dir_->file("prompts.txt")) + " --json");
  ASSERT_EQ(o.exit_code, 0) << o.err;
  const auto r = nlohmann::json::parse(o.out);
  EXPECT_EQ(r["mode"], "compare");
  EXPECT_EQ(r["engine2"], fp32());
  EXPECT_EQ(r["source"], "prompts");
  EXPECT_EQ(r["sequences"], 4);  // the blank line is no sequence
  EXPECT_EQ(r["scored_tokens"], r["tokens"].get<int64_t>() - 4);
  EXPECT_EQ(r["kl_mean"], 0.0);
  EXPECT_EQ(r["kl_p99"], 0.0);
  EXPECT_EQ(r["kl_max"], 0.0);
  EXPECT_EQ(r["top1_agreement_percent"], 100.0);
  EXPECT_EQ(r["max_abs_logit_diff"], 0.0);
  EXPECT_EQ(r["engine_perplexity"], r["engine2_perplexity"]);
}

TEST_F(EvalCli, CompareFp32WithBf16) {
  const Outcome o = eval("--compare " + q(bf16()) + " --prompts " + q(dir_->file("prompts.txt")) + " --json");
  ASSERT_EQ(o.exit_code, 0) << o.err;
  const auto r = nlohmann::json::parse(o.out);
  EXPECT_GT(r["kl_mean"].get<double>(), 0.0);
  EXPECT_LT(r["kl_mean"].get<double>(), 1e-2);
  EXPECT_LE(r["kl_p99"].get<double>(), r["kl_max"].get<double>());
  EXPECT_GT(r["top1_agreement_percent"].get<double>(), 90.0);
  EXPECT_GT(r["max_abs_logit_diff"].get<double>(), 0.0);
  EXPECT_LT(r["max_abs_logit_diff"].get<double>(), 1.0);

  // The whole text in windows, the table form.
  const Outcome t = eval("--compare " + q(bf16()) + " --perplexity " + q(kGpl3) + " --max-tokens 700 --window 256");
  ASSERT_EQ(t.exit_code, 0) << t.err;
  for (const char* needle : {"1 sequence(s), 700 tokens", "699 compared", "KL mean/p99/max", "top-1 agreement", "max |logit diff|"}) {
    EXPECT_NE(t.out.find(needle), std::string::npos) << needle << " in:\n" << t.out;
  }
}

TEST_F(EvalCli, BadInputIsOneErrorLine) {
  const std::string text = " --perplexity " + q(kGpl3);
  expect_clean_error(eval("--perplexity " + q(dir_->file("missing.txt"))), "missing.txt: cannot open: No such file");
  std::ofstream(dir_->file("empty.txt")) << "";
  std::ofstream(dir_->file("blank.txt")) << " \n\n  \n";
  expect_clean_error(eval("--perplexity " + q(dir_->file("empty.txt"))), "empty text");
  expect_clean_error(eval("--perplexity " + q(dir_->file("blank.txt"))), "empty text");
  expect_clean_error(eval("--compare " + q(bf16()) + " --prompts " + q(dir_->file("blank.txt"))), "empty text");
  expect_clean_error(eval(text + " --window 1"), "--window must be at least 2, got 1");
  expect_clean_error(eval(text + " --window 0"), "--window must be at least 2, got 0");
  expect_clean_error(eval(text + " --window 513"), "window 513 exceeds the engine's max sequence length 512");
  expect_clean_error(eval(text + " --window 64 --stride 65"), "--stride 65 exceeds --window 64");
  expect_clean_error(eval(text + " --stride 513"), "stride 513 exceeds the window 512");
  expect_clean_error(eval(text + " --stride 0"), "--stride must be at least 1, got 0");
  expect_clean_error(eval(text + " --stride -3"), "--stride must be at least 1, got -3");
  expect_clean_error(eval(text + " --max-tokens 1"), "--max-tokens must be at least 2");
  expect_clean_error(eval(""), "give --perplexity FILE, or --compare ENGINE2 with --prompts FILE");
  expect_clean_error(eval("--compare " + q(bf16())), "--compare needs one of --prompts FILE");
  expect_clean_error(eval("--prompts " + q(dir_->file("prompts.txt"))), "--prompts needs --compare");
  expect_clean_error(eval("--perplexity " + q(kGpl3) + " --compare " + q(dir_->file("nope.kiln")) + " --prompts x"),
                     "--compare needs one of");
  expect_clean_error(eval("--compare " + q(dir_->file("nope.kiln")) + " --prompts " + q(dir_->file("prompts.txt"))),
                     "nope.kiln");

  // Engines of different vocabularies.
  const std::string llama = dir_->file("tiny-llama.kiln");
  const Outcome b = kiln(*dir_, "build " + q(shared_path("fixtures/hf-tiny/tiny-llama")) + " --dtype fp32 -o " + q(llama));
  ASSERT_EQ(b.exit_code, 0) << b.err;
  expect_clean_error(eval("--compare " + q(llama) + " --prompts " + q(dir_->file("prompts.txt"))),
                     "has a vocabulary of 512 tokens, " + llama + " of 32000: compare needs the same vocabulary");
}

}  // namespace
}  // namespace kiln
