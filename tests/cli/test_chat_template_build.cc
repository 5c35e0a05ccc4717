// Chat templates through build and load: found in the model directory (tokenizer_config.json),
// overridden by --chat-template (also the way to give a llama2.c checkpoint one), refused at build
// time with one error line when malformed, and served by Model::chat_template(). Expected prompts
// are transformers' (tests/tokenizer/chat_template_goldens.json).
#include <filesystem>
#include <fstream>

#include "cli_runner.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using testing::kiln;
using testing::Outcome;
using testing::shared_path;
using testing::slurp;
using testing::source_path;
using testing::TempDir;

std::string q(const std::string& s) { return "'" + s + "'"; }
std::string template_file(const std::string& name) {
  return source_path("tests/tokenizer/chat_templates/" + name);
}

// transformers' rendering of one golden case.
std::string golden(const std::string& tmpl, const std::string& case_name) {
  const auto goldens =
      nlohmann::json::parse(slurp(source_path("tests/tokenizer/chat_template_goldens.json")));
  for (const auto& c : goldens["cases"]) {
    if (c["template"] == tmpl && c["name"] == case_name) return c["expected"];
  }
  ADD_FAILURE() << "no golden " << tmpl << "/" << case_name;
  return "";
}

class ChatTemplateBuild : public ::testing::Test {
 protected:
  // A copy of hf-tiny tiny-llama whose tokenizer_config.json gets `chat_template` (a JSON value).
  std::string tiny_llama_with(const nlohmann::json& chat_template) {
    const std::string copy = dir_.file("tiny-llama-" + std::to_string(copies_++));
    fs::create_directories(copy);
    for (const auto& entry : fs::directory_iterator(shared_path("fixtures/hf-tiny/tiny-llama"))) {
      fs::copy_file(entry.path(), fs::path(copy) / entry.path().filename());
      fs::permissions(fs::path(copy) / entry.path().filename(), fs::perms::owner_write,
                      fs::perm_options::add);
    }
    auto config = nlohmann::ordered_json::parse(slurp(copy + "/tokenizer_config.json"));
    config["chat_template"] = chat_template;
    std::ofstream(copy + "/tokenizer_config.json") << config.dump(2);
    return copy;
  }
  std::unique_ptr<Model> load(const std::string& engine) {
    auto model = Model::load(engine, RuntimeOptions{});
    EXPECT_TRUE(model.ok()) << (model.ok() ? "" : model.error().message);
    return model.ok() ? std::move(model).value() : nullptr;
  }
  // One error line mentioning every needle, exit status 1, no engine written.
  void expect_build_error(const Outcome& o, const std::string& engine,
                          const std::vector<std::string>& needles) {
    EXPECT_EQ(o.exit_code, 1) << o.err;
    EXPECT_EQ(o.err.rfind("kiln: error: ", 0), 0u) << o.err;
    EXPECT_EQ(std::count(o.err.begin(), o.err.end(), '\n'), 1) << o.err;
    for (const auto& needle : needles)
      EXPECT_NE(o.err.find(needle), std::string::npos) << needle << " not in: " << o.err;
    EXPECT_FALSE(fs::exists(engine));
  }

  TempDir dir_;
  int copies_ = 0;
};

TEST_F(ChatTemplateBuild, TemplateFromTokenizerConfigRoundTrips) {
  const std::string llama2 = slurp(template_file("llama-2-chat.jinja"));
  const std::string model_dir = tiny_llama_with(llama2);
  BuildOptions options;
  options.model_path = model_dir;
  options.output_path = dir_.file("llama2.kiln");
  options.max_seq_len = 64;
  const auto report = build_engine(options);
  ASSERT_TRUE(report.ok()) << report.error().message;
  EXPECT_EQ(report->chat_template, model_dir + "/tokenizer_config.json");

  const auto model = load(options.output_path);
  ASSERT_TRUE(model);
  const ChatTemplate* chat = model->chat_template();
  ASSERT_NE(chat, nullptr);
  EXPECT_EQ(chat->source(), llama2);
  EXPECT_EQ(chat->bos_token(), "<s>");  // the fixture's tokenizer_config.json
  EXPECT_EQ(chat->eos_token(), "</s>");
  const std::vector<ChatMessage> messages = {{"system", "You are a pirate."}, {"user", "Who are you?"}};
  const auto prompt = chat->render(messages, true);
  ASSERT_TRUE(prompt.ok()) << prompt.error().message;
  EXPECT_EQ(*prompt, golden("llama-2-chat", "system_user"));
  EXPECT_EQ(model->engine().metadata["chat_template"]["source"], model_dir + "/tokenizer_config.json");
}

TEST_F(ChatTemplateBuild, NamedTemplateListUsesDefault) {
  const std::string qwen = slurp(template_file("qwen2-instruct.jinja"));
  const std::string model_dir = tiny_llama_with(nlohmann::json::array(
      {{{"name", "tool_use"}, {"template", "{{ 'tools' }}"}}, {{"name", "default"}, {"template", qwen}}}));
  const std::string engine = dir_.file("named.kiln");
  const Outcome o = kiln(dir_, "build " + q(model_dir) + " -o " + q(engine) + " --max-seq-len 64");
  ASSERT_EQ(o.exit_code, 0) << o.err;
  const auto model = load(engine);
  ASSERT_TRUE(model && model->chat_template());
  EXPECT_EQ(model->chat_template()->source(), qwen);
}

TEST_F(ChatTemplateBuild, FlagOverridesTheModelsTemplate) {
  const std::string model_dir = tiny_llama_with("{{ 'the model dir template' }}");
  const std::string engine = dir_.file("override.kiln");
  const Outcome o =
      kiln(dir_, "build " + q(model_dir) + " -o " + q(engine) + " --max-seq-len 64 --chat-template " +
                     q(template_file("qwen2-instruct.jinja")));
  ASSERT_EQ(o.exit_code, 0) << o.err;
  const auto model = load(engine);
  ASSERT_TRUE(model && model->chat_template());
  EXPECT_EQ(model->chat_template()->source(), slurp(template_file("qwen2-instruct.jinja")));
  const std::vector<ChatMessage> messages = {
      {"user", "Hi"}, {"assistant", "Hello, how can I help?"}, {"user", "Tell me a joke."}};
  // The golden's tokenizer has eos "<|im_end|>"; qwen2's template prints no special token variable.
  EXPECT_EQ(*model->chat_template()->render(messages, true), golden("qwen2-instruct", "multi_turn"));
}

TEST_F(ChatTemplateBuild, Llama2cCheckpointTakesTemplateFromFlag) {
  const std::string engine = dir_.file("stories.kiln");
  const Outcome o =
      kiln(dir_, "build " + q(shared_path("models/stories260K/stories260K.bin")) + " -o " + q(engine) +
                     " --tokenizer " + q(shared_path("models/stories260K/tok512.bin")) +
                     " --max-seq-len 64 --chat-template " + q(template_file("llama-2-chat.jinja")));
  ASSERT_EQ(o.exit_code, 0) << o.err;
  const auto model = load(engine);
  ASSERT_TRUE(model && model->chat_template());
  // No tokenizer_config.json: bos / eos are the tokenizer's pieces for ids 1 and 2, trimmed.
  EXPECT_EQ(model->chat_template()->bos_token(), "<s>");
  EXPECT_EQ(model->chat_template()->eos_token(), "</s>");
  const std::vector<ChatMessage> messages = {{"user", "Hello!"}};
  EXPECT_EQ(*model->chat_template()->render(messages, true), golden("llama-2-chat", "user_only"));
}

TEST_F(ChatTemplateBuild, ModelWithoutTemplateHasNone) {
  const std::string engine = dir_.file("plain.kiln");
  const Outcome o = kiln(dir_, "build " + q(shared_path("fixtures/hf-tiny/tiny-llama")) + " -o " + q(engine) +
                                   " --max-seq-len 64");
  ASSERT_EQ(o.exit_code, 0) << o.err;
  const auto model = load(engine);
  ASSERT_TRUE(model);
  EXPECT_EQ(model->chat_template(), nullptr);
}

TEST_F(ChatTemplateBuild, MalformedTemplateFailsTheBuild) {
  const std::string engine = dir_.file("bad.kiln");
  const std::string model_dir =
      tiny_llama_with("{% for m in messages %}{{ m.content }}\n{% if m.role == %}x{% endif %}");
  expect_build_error(kiln(dir_, "build " + q(model_dir) + " -o " + q(engine)), engine,
                     {"tokenizer_config.json", "chat template 2:"});

  const std::string bad_file = dir_.file("bad.jinja");
  std::ofstream(bad_file) << "{{ messages | no_such_filter }}";
  expect_build_error(kiln(dir_, "build " + q(shared_path("fixtures/hf-tiny/tiny-llama")) + " -o " +
                                    q(engine) + " --chat-template " + q(bad_file)),
                     engine, {"bad.jinja", "no filter named 'no_such_filter'"});

  expect_build_error(kiln(dir_, "build " + q(shared_path("fixtures/hf-tiny/tiny-llama")) + " -o " +
                                    q(engine) + " --chat-template " + q(dir_.file("missing.jinja"))),
                     engine, {"missing.jinja"});

  const std::string not_a_template = tiny_llama_with(42);
  expect_build_error(kiln(dir_, "build " + q(not_a_template) + " -o " + q(engine)), engine,
                     {"'chat_template': expected a string"});
}

}  // namespace
}  // namespace kiln
