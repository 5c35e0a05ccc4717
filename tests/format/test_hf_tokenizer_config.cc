// tokenizer_config.json / chat_template.jinja: where the chat template and its special tokens come
// from, in each form the Hub uses, and the refusals naming the file and field.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "format/hf_tokenizer_config.h"

namespace kiln {
namespace {

using Json = nlohmann::ordered_json;

Result<HfChatTemplate> parse(const Json& config) {
  return parse_hf_tokenizer_config(config.dump(), "tc.json");
}

TEST(HfTokenizerConfig, StringTemplateAndPlainTokens) {
  const auto r = parse({{"bos_token", "<s>"}, {"eos_token", "</s>"}, {"chat_template", "{{ messages }}"}});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->source, "{{ messages }}");
  EXPECT_EQ(r->origin, "tc.json");
  EXPECT_EQ(r->bos_token, "<s>");
  EXPECT_EQ(r->eos_token, "</s>");
  EXPECT_TRUE(r->has_tokenizer_config);
}

TEST(HfTokenizerConfig, AddedTokenObjectsAndNull) {
  // Older configs store special tokens as serialized AddedToken objects; Qwen's bos_token is null.
  const Json config = {
      {"bos_token", nullptr},
      {"eos_token",
       {{"__type", "AddedToken"}, {"content", "<|im_end|>"}, {"lstrip", false}, {"normalized", false}}},
      {"chat_template", "x"}};
  const auto r = parse(config);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->bos_token, "");
  EXPECT_EQ(r->eos_token, "<|im_end|>");
}

TEST(HfTokenizerConfig, NamedTemplatesUseDefault) {
  const Json config = {{"chat_template", Json::array({{{"name", "tool_use"}, {"template", "T"}},
                                                      {{"name", "default"}, {"template", "D"}},
                                                      {{"name", "rag"}, {"template", "R"}}})}};
  const auto r = parse(config);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->source, "D");
}

TEST(HfTokenizerConfig, NoTemplate) {
  const auto r = parse({{"bos_token", "<s>"}});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_TRUE(r->source.empty());
  EXPECT_TRUE(r->origin.empty());
}

TEST(HfTokenizerConfig, Refusals) {
  const auto message = [](const Json& config) {
    const auto r = parse(config);
    return r.ok() ? std::string() : r.error().message;
  };
  EXPECT_NE(message({{"chat_template", 42}}).find("tc.json: 'chat_template': expected a string"),
            std::string::npos);
  EXPECT_NE(message({{"chat_template", Json::array({{{"name", "rag"}, {"template", "R"}}})}})
                .find("no template named \"default\""),
            std::string::npos);
  EXPECT_NE(message({{"chat_template", Json::array({"x"})}}).find("expected {\"name\", \"template\"}"),
            std::string::npos);
  EXPECT_NE(message({{"eos_token", 7}}).find("'eos_token'"), std::string::npos);
  const auto duplicate =
      parse_hf_tokenizer_config(R"({"chat_template": "a", "chat_template": "b"})", "tc.json");
  ASSERT_FALSE(duplicate.ok());
  EXPECT_NE(duplicate.error().message.find("duplicate key"), std::string::npos);
  EXPECT_FALSE(parse_hf_tokenizer_config("[1]", "tc.json").ok());
  EXPECT_FALSE(parse_hf_tokenizer_config("{", "tc.json").ok());
}

TEST(HfTokenizerConfig, DirectoryReadsJinjaFileFirst) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("kiln-tc-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const auto write = [&](const char* name, const std::string& text) { std::ofstream(dir / name) << text; };

  auto none = read_hf_chat_template(dir.string());
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->source.empty());
  EXPECT_FALSE(none->has_tokenizer_config);

  write("tokenizer_config.json",
        R"({"bos_token": "<s>", "eos_token": "</s>", "chat_template": "from config"})");
  auto from_config = read_hf_chat_template(dir.string());
  ASSERT_TRUE(from_config.ok()) << from_config.error().message;
  EXPECT_EQ(from_config->source, "from config");

  // transformers >= 4.43 saves the template beside the config; it wins over the config's.
  write("chat_template.jinja", "from jinja file\n");
  auto from_file = read_hf_chat_template(dir.string());
  ASSERT_TRUE(from_file.ok()) << from_file.error().message;
  EXPECT_EQ(from_file->source, "from jinja file\n");
  EXPECT_EQ(from_file->origin, (dir / "chat_template.jinja").string());
  EXPECT_EQ(from_file->bos_token, "<s>");
  fs::remove_all(dir);
}

}  // namespace
}  // namespace kiln
