// The kiln binary's contract: the acceptance commands of the README, and bad input. Every bad input
// must give exactly one line "kiln: error: ..." naming the problem and exit status 1: no crash
// (signal), no hang (each command runs under `timeout`), no partial output posing as a result.
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "cli_runner.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using testing::read_json;
using testing::shared_path;
using testing::TempDir;

using testing::kiln;
using testing::Outcome;
using testing::slurp;

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

// One error line mentioning `needle`, exit status 1.
void expect_clean_error(const Outcome& o, const std::string& needle, const std::string& what) {
  EXPECT_EQ(o.exit_code, 1) << what << "\nstderr: " << o.err;
  EXPECT_EQ(o.err.rfind("kiln: error: ", 0), 0u) << what << "\nstderr: " << o.err;
  EXPECT_EQ(std::count(o.err.begin(), o.err.end(), '\n'), 1) << what << "\nstderr: " << o.err;
  EXPECT_NE(o.err.find(needle), std::string::npos) << what << ": expected '" << needle << "' in: " << o.err;
}

std::string q(const std::string& s) { return "'" + s + "'"; }

class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    engine_ = dir_.file("s.kiln");
    const Outcome o = kiln(dir_, "build " + q(shared_path("models/stories260K/stories260K.bin")) + " -o " + q(engine_) +
                                     " --tokenizer " + q(shared_path("models/stories260K/tok512.bin")) + " --max-seq-len 64");
    ASSERT_EQ(o.exit_code, 0) << o.err;
  }
  // A copy of the tiny HF Llama whose file `name` is replaced by `bytes`.
  std::string broken_hf_copy(const std::string& name, const std::string& bytes) {
    const std::string copy = dir_.file("hf-" + std::to_string(copies_++));
    fs::create_directories(copy);
    for (const auto& entry : fs::directory_iterator(shared_path("fixtures/hf-tiny/tiny-llama"))) {
      fs::copy_file(entry.path(), fs::path(copy) / entry.path().filename());
      fs::permissions(fs::path(copy) / entry.path().filename(), fs::perms::owner_write, fs::perm_options::add);
    }
    write_file(copy + "/" + name, bytes);
    return copy;
  }
  std::string engine_copy(const std::function<void(std::string&)>& edit) {
    std::string bytes = slurp(engine_);
    edit(bytes);
    const std::string path = dir_.file("broken-" + std::to_string(copies_++) + ".kiln");
    write_file(path, bytes);
    return path;
  }
  Outcome build_from(const std::string& model) { return kiln(dir_, "build " + q(model) + " -o " + q(dir_.file("x.kiln"))); }

  TempDir dir_;
  std::string engine_;
  int copies_ = 0;
};

TEST_F(Cli, RunGreedyJsonMatchesLlama2c) {
  const Outcome o = kiln(dir_, "run " + q(engine_) + " --prompt-ids 1 -n 63 --temperature 0 --json");
  ASSERT_EQ(o.exit_code, 0) << o.err;
  const auto out = nlohmann::json::parse(o.out);
  const auto expected = read_json(shared_path("models/stories260K/EXPECTED.json"))["greedy_ids_128"].get<std::vector<int32_t>>();
  EXPECT_EQ(out["prompt_ids"], nlohmann::json::array({1}));
  EXPECT_EQ(out["ids"].get<std::vector<int32_t>>(), std::vector<int32_t>(expected.begin(), expected.begin() + 63));
  EXPECT_TRUE(out["text"].get<std::string>().rfind("Once upon a time", 0) == 0) << out["text"];
  EXPECT_TRUE(out["stats"].contains("decode_tokens_per_second"));
  EXPECT_FALSE(out.contains("last_logits"));
}

TEST_F(Cli, RunStreamsTextAndDumpsLogits) {
  Outcome o = kiln(dir_, "run " + q(engine_) + " -p 'Once upon a time' -n 20 --temperature 0");
  ASSERT_EQ(o.exit_code, 0) << o.err;
  EXPECT_EQ(o.out.rfind("Once upon a time, there was a little girl named Lily", 0), 0u) << o.out;
  EXPECT_NE(o.err.find("tok/s"), std::string::npos);
  EXPECT_NE(o.err.find("peak RSS"), std::string::npos);
  o = kiln(dir_, "run " + q(engine_) + " --prompt-ids 1,403 -n 2 --json --dump-logits --seed 3");
  ASSERT_EQ(o.exit_code, 0) << o.err;
  EXPECT_EQ(nlohmann::json::parse(o.out)["last_logits"].size(), 512u);
}

TEST_F(Cli, SameSeedSameOutput) {
  const std::string cmd = "run " + q(engine_) + " --prompt-ids 1 -n 40 --temperature 1 --top-p 0.9 --seed 11 --json";
  const Outcome a = kiln(dir_, cmd), b = kiln(dir_, cmd);
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_EQ(nlohmann::json::parse(a.out)["ids"], nlohmann::json::parse(b.out)["ids"]);
}

TEST_F(Cli, InspectAndTokenize) {
  Outcome o = kiln(dir_, "inspect " + q(engine_));
  ASSERT_EQ(o.exit_code, 0) << o.err;
  EXPECT_NE(o.out.find("qkv"), std::string::npos);
  EXPECT_NE(o.out.find("gate_up"), std::string::npos);
  EXPECT_NE(o.out.find("format        version 1"), std::string::npos);
  o = kiln(dir_, "tokenize " + q(engine_) + " --bos 'Once upon a time'");
  ASSERT_EQ(o.exit_code, 0) << o.err;
  EXPECT_EQ(nlohmann::json::parse(o.out), nlohmann::json::parse("[1,403,407,261,378]"));
}

TEST_F(Cli, MissingFiles) {
  expect_clean_error(kiln(dir_, "run " + q(dir_.file("nope.kiln")) + " --prompt-ids 1"), "nope.kiln", "missing engine");
  expect_clean_error(build_from(dir_.file("nope.bin")), "nope.bin", "missing model");
  expect_clean_error(build_from(broken_hf_copy("config.json", "{}").append("/missing-dir")), "missing-dir", "missing dir");
}

TEST_F(Cli, BrokenSafetensors) {
  const std::string good = slurp(shared_path("fixtures/hf-tiny/tiny-llama/model.safetensors"));
  expect_clean_error(build_from(broken_hf_copy("model.safetensors", good.substr(0, good.size() / 2))), "model.safetensors", "truncated");
  std::string flipped = good;
  flipped[20] ^= 0x40;  // inside the JSON header
  expect_clean_error(build_from(broken_hf_copy("model.safetensors", flipped)), "model.safetensors", "bit flip in header");
  std::string huge_len = good;
  huge_len[5] = 0x7f;  // header length far beyond the file
  expect_clean_error(build_from(broken_hf_copy("model.safetensors", huge_len)), "model.safetensors", "header length");
  // An offset out of range: rewrite the first data_offsets end to a huge number of equal width.
  std::string out_of_range = good;
  const size_t at = out_of_range.find("\"data_offsets\":[");
  ASSERT_NE(at, std::string::npos);
  const size_t comma = out_of_range.find(',', at);
  const size_t close = out_of_range.find(']', comma);
  out_of_range.replace(comma + 1, close - comma - 1, std::string(close - comma - 1, '9'));
  expect_clean_error(build_from(broken_hf_copy("model.safetensors", out_of_range)), "model.safetensors", "offsets");
  std::string bad_dtype = good;
  const size_t dt = bad_dtype.find("\"F16\"");
  ASSERT_NE(dt, std::string::npos);
  bad_dtype.replace(dt, 5, "\"I16\"");
  expect_clean_error(build_from(broken_hf_copy("model.safetensors", bad_dtype)), "dtype", "unsupported dtype");
}

TEST_F(Cli, UnknownArchitecture) {
  std::string config = slurp(shared_path("fixtures/hf-tiny/tiny-llama/config.json"));
  config.replace(config.find("LlamaForCausalLM"), 16, "GPTNeoXForCausalLM");
  expect_clean_error(build_from(broken_hf_copy("config.json", config)), "GPTNeoXForCausalLM", "unknown architecture");
}

TEST_F(Cli, WrongLlama2cHeader) {
  std::string bytes = slurp(shared_path("models/stories260K/stories260K.bin"));
  bytes[0] = 0x7f;  // dim no longer matches the data
  bytes[3] = 0x7f;
  write_file(dir_.file("bad.bin"), bytes);
  expect_clean_error(build_from(dir_.file("bad.bin")), "bad.bin", "llama2.c header");
}

TEST_F(Cli, CorruptEngines) {
  auto run = [&](const std::string& path) { return kiln(dir_, "run " + q(path) + " --prompt-ids 1 -n 4"); };
  expect_clean_error(run(engine_copy([](std::string& b) { b[0] = 'X'; })), "magic", "wrong magic");
  expect_clean_error(run(engine_copy([](std::string& b) { b[8] = 2; })), "version", "other format version");
  expect_clean_error(run(engine_copy([](std::string& b) { b.resize(b.size() - 100); })), "truncated", "truncated engine");
  expect_clean_error(run(engine_copy([](std::string& b) { b[b.size() - 7] ^= 1; })), "checksum", "checksum mismatch");
  expect_clean_error(run(engine_copy([](std::string& b) { std::memcpy(&b[48], "cuda\0", 5); })), "cuda", "other backend");
  expect_clean_error(run(dir_.file("stdout.txt")), "", "garbage file");
}

TEST_F(Cli, PromptTooLongAndUnknownIds) {
  std::string ids = "1";
  for (int i = 0; i < 70; ++i) ids += ",300";
  expect_clean_error(kiln(dir_, "run " + q(engine_) + " --prompt-ids " + ids), "max sequence length", "prompt too long");
  expect_clean_error(kiln(dir_, "run " + q(engine_) + " --prompt-ids 1,99999"), "99999", "unknown token id");
  expect_clean_error(kiln(dir_, "run " + q(engine_) + " --prompt-ids 1,-4"), "-4", "negative token id");
  expect_clean_error(kiln(dir_, "run " + q(engine_) + " --prompt-ids 1,x"), "'x'", "non-numeric id");
}

}  // namespace
}  // namespace kiln
