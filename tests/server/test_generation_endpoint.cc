// The pieces of a generation request between validation and the worker: the chat prompt (template
// rendered with the generation prompt; BOS added only when the text does not already start with it)
// and the sequence specs (prompt-major choice order, seed + i per sample, every parameter carried).
#include <gtest/gtest.h>

#include "server/generation_endpoint.h"
#include "test_util.h"

namespace kiln {
namespace {

Tokenizer stories_tokenizer() {
  auto tokenizer = Tokenizer::from_file(testing::shared_path("models/stories260K/tok512.bin"));
  EXPECT_TRUE(tokenizer.ok());
  return std::move(tokenizer).value();
}

ChatTemplate parse_template(const std::string& source, const Tokenizer& tokenizer) {
  auto parsed =
      ChatTemplate::parse(source, tokenizer.piece(tokenizer.bos_id()), tokenizer.piece(tokenizer.eos_id()));
  EXPECT_TRUE(parsed.ok()) << (parsed.ok() ? "" : parsed.error().message);
  return std::move(parsed).value();
}

TEST(GenerationEndpoint, ChatPromptAddsBosOnlyWhenTheTemplateDidNot) {
  const Tokenizer tokenizer = stories_tokenizer();
  const std::vector<ChatMessage> messages = {{"system", "Be kind."}, {"user", "Hi"}};
  const ChatTemplate plain = parse_template(
      "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
      "{% if add_generation_prompt %}assistant:{% endif %}",
      tokenizer);
  ApiResult<ChatPrompt> prompt = render_chat_prompt(&plain, tokenizer, messages);
  ASSERT_TRUE(prompt.ok()) << prompt.error().message;
  EXPECT_EQ(prompt->text, "system: Be kind.\nuser: Hi\nassistant:");
  EXPECT_TRUE(prompt->add_bos);

  const ChatTemplate with_bos = parse_template("{{ bos_token }}{{ messages[-1]['content'] }}", tokenizer);
  prompt = render_chat_prompt(&with_bos, tokenizer, messages);
  ASSERT_TRUE(prompt.ok()) << prompt.error().message;
  EXPECT_EQ(prompt->text, tokenizer.piece(tokenizer.bos_id()) + "Hi");
  EXPECT_FALSE(prompt->add_bos) << "the template wrote the BOS token itself";
}

TEST(GenerationEndpoint, ChatPromptErrors) {
  const Tokenizer tokenizer = stories_tokenizer();
  const std::vector<ChatMessage> messages = {{"user", "Hi"}};
  ApiResult<ChatPrompt> none = render_chat_prompt(nullptr, tokenizer, messages);
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.error().status, 400);
  EXPECT_EQ(none.error().code, "no_chat_template");
  const ChatTemplate raising =
      parse_template("{{ raise_exception('only user/assistant roles') }}", tokenizer);
  ApiResult<ChatPrompt> raised = render_chat_prompt(&raising, tokenizer, messages);
  ASSERT_FALSE(raised.ok());
  EXPECT_EQ(raised.error().status, 400);
  EXPECT_EQ(raised.error().param, "messages");
  EXPECT_NE(raised.error().message.find("only user/assistant roles"), std::string::npos)
      << raised.error().message;
}

TEST(GenerationEndpoint, SequenceSpecsPerChoice) {
  CompletionRequest request;
  request.n = 3;
  request.seed = 10;
  request.temperature = 0.7f;
  request.top_k = 5;
  request.top_p = 0.9f;
  request.min_p = 0.05f;
  request.repetition_penalty = 1.1f;
  request.presence_penalty = 0.5f;
  request.frequency_penalty = -0.5f;
  request.logit_bias = {{3, 1.0f}};
  request.stop = {"x"};
  request.logprobs = 2;
  request.ignore_eos = true;
  const std::vector<TokenizedPrompt> prompts = {{{1, 2}, "a"}, {{1, 3, 4}, "b"}};
  const std::vector<SequenceSpec> specs = make_sequence_specs(request, prompts, {7, 8});
  ASSERT_EQ(specs.size(), 6u);
  for (int p = 0; p < 2; ++p) {
    for (int i = 0; i < 3; ++i) {
      const SequenceSpec& s = specs[p * 3 + i];
      EXPECT_EQ(s.prompt_ids, prompts[p].ids);
      EXPECT_EQ(s.max_tokens, p == 0 ? 7 : 8);
      EXPECT_EQ(s.sampling.seed, 10u + i) << "sample i of each prompt uses seed + i";
      EXPECT_EQ(s.sampling.temperature, 0.7f);
      EXPECT_EQ(s.sampling.top_k, 5);
      EXPECT_EQ(s.sampling.top_p, 0.9f);
      EXPECT_EQ(s.sampling.min_p, 0.05f);
      EXPECT_EQ(s.sampling.repetition_penalty, 1.1f);
      EXPECT_EQ(s.presence_penalty, 0.5f);
      EXPECT_EQ(s.frequency_penalty, -0.5f);
      EXPECT_EQ(s.logit_bias, request.logit_bias);
      EXPECT_EQ(s.stop, request.stop);
      EXPECT_EQ(s.logprobs, 2);
      EXPECT_TRUE(s.ignore_eos);
      EXPECT_TRUE(s.needs_host_logits());
    }
  }
  // Without a seed every choice gets its own random one.
  request.seed.reset();
  const std::vector<SequenceSpec> unseeded = make_sequence_specs(request, prompts, {7, 8});
  EXPECT_NE(unseeded[0].sampling.seed, unseeded[1].sampling.seed);
}

}  // namespace
}  // namespace kiln
