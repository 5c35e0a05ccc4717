// Chat templates against transformers' apply_chat_template (goldens from
// tools/make_chat_template_goldens.py): the real templates of Llama 2 / 3 / 3.1, Mistral v0.1 / v0.3
// and Qwen2 / 2.5 over ~15 conversations each, and one small template per interpreter feature, byte
// for byte; plus errors with positions and hostile templates that must fail cleanly.
#include <gtest/gtest.h>

#include <ctime>
#include <map>
#include <random>
#include <thread>

#include "tokenizer/chat_template.h"
#include "tokenizer_test_util.h"

namespace kiln {
namespace {

using testing::escaped;
using testing::read_file;

std::string template_path(const std::string& file) {
  return std::string(KILN_SOURCE_DIR) + "/tests/tokenizer/chat_templates/" + file;
}

// Ordered, so contexts keep their key order when dumped back to JSON (dict order shows in output).
const nlohmann::ordered_json& goldens() {
  static const nlohmann::ordered_json golden = nlohmann::ordered_json::parse(
      read_file(std::string(KILN_SOURCE_DIR) + "/tests/tokenizer/chat_template_goldens.json"));
  return golden;
}

// Checks one rendering against a golden entry: the exact text, the exact raise_exception message,
// or (other jinja2 errors) any error. Returns whether it matched.
bool expect_matches(const Result<std::string>& rendered, const nlohmann::ordered_json& golden,
                    const std::string& what) {
  if (golden.contains("expected")) {
    const std::string expected = golden["expected"];
    if (!rendered.ok()) {
      ADD_FAILURE() << what << ": " << rendered.error().message << "\n want: " << escaped(expected);
      return false;
    }
    EXPECT_EQ(*rendered, expected) << what << "\n got:  " << escaped(*rendered)
                                   << "\n want: " << escaped(expected);
    return *rendered == expected;
  }
  const auto& error = golden["error"];
  if (rendered.ok()) {
    ADD_FAILURE() << what << ": expected an error (" << error.dump() << "), got " << escaped(*rendered);
    return false;
  }
  if (!error["raised"].get<bool>()) return true;
  EXPECT_EQ(rendered.error().message, error["message"].get<std::string>()) << what;
  return rendered.error().message == error["message"].get<std::string>();
}

TEST(ChatTemplate, RealTemplatesMatchTransformers) {
  std::map<std::string, ChatTemplate> templates;
  for (const auto& [name, info] : goldens()["templates"].items()) {
    auto parsed =
        ChatTemplate::parse(read_file(template_path(info["file"])), info["bos_token"], info["eos_token"]);
    ASSERT_TRUE(parsed.ok()) << name << ": " << parsed.error().message;
    templates.emplace(name, *parsed);
  }
  ASSERT_EQ(templates.size(), 7u);
  std::map<std::string, int> passed;
  int cases = 0;
  for (const auto& c : goldens()["cases"]) {
    const std::string name = c["template"].get<std::string>() + "/" + c["name"].get<std::string>();
    const ChatTemplate& chat = templates.at(c["template"]);
    Result<std::string> rendered = Error{""};
    if (c["plain"].get<bool>()) {
      std::vector<ChatMessage> messages;
      for (const auto& m : c["context"]["messages"]) messages.push_back({m["role"], m["content"]});
      rendered = chat.render(messages, c["context"]["add_generation_prompt"].get<bool>());
    } else {
      rendered = chat.render_json(c["context"].dump());
    }
    if (expect_matches(rendered, c, name)) ++passed[c["template"]];
    ++cases;
  }
  EXPECT_GE(cases, 100);
  for (const auto& [name, count] : passed) std::printf("  %-26s %d cases match\n", name.c_str(), count);
}

TEST(ChatTemplate, FeatureSnippetsMatchJinja2) {
  int count = 0;
  for (const auto& s : goldens()["snippets"]) {
    const std::string name = s["name"];
    auto parsed = ChatTemplate::parse(s["source"], "", "");
    if (!parsed.ok()) {
      ASSERT_TRUE(s.contains("error")) << name << ": parse failed: " << parsed.error().message;
      EXPECT_FALSE(s["error"]["raised"].get<bool>()) << name;
      ++count;
      continue;
    }
    expect_matches(parsed->render_json(s["context"].dump()), s, name);
    ++count;
  }
  EXPECT_GE(count, 50);
}

Result<std::string> render_once(
    const std::string& source,
    const std::string& context = R"({"messages": [{"role": "user", "content": "hi"}]})") {
  auto parsed = ChatTemplate::parse(source, "<s>", "</s>");
  if (!parsed.ok()) return parsed.error();
  return parsed->render_json(context);
}

TEST(ChatTemplate, RenderPassesMessagesAndSpecialTokens) {
  const std::string source =
      "{{ bos_token }}{% for m in messages %}[{{ m.role }}:{{ m['content'] }}]{% endfor %}"
      "{% if add_generation_prompt %}>{% endif %}{{ eos_token }}{{ tools }}\n";
  auto chat = ChatTemplate::parse(source, "<s>", "</s>");
  ASSERT_TRUE(chat.ok()) << chat.error().message;
  const std::vector<ChatMessage> messages = {{"system", "sys"}, {"user", "héllo\n\"x\""}};
  EXPECT_EQ(*chat->render(messages, true), "<s>[system:sys][user:héllo\n\"x\"]></s>None");
  EXPECT_EQ(*chat->render(messages, false), "<s>[system:sys][user:héllo\n\"x\"]</s>None");
  EXPECT_EQ(chat->source(), source);  // as given, before newline normalization
  EXPECT_EQ(chat->bos_token(), "<s>");
  const auto empty = chat->render({}, true);
  ASSERT_FALSE(empty.ok());
  EXPECT_EQ(empty.error().message,
            "Cannot apply chat template to an empty conversation. Provide at least one message.");
  EXPECT_FALSE(chat->render_json("not json").ok());
  EXPECT_FALSE(chat->render_json(R"({"messages": "x"})").ok());
  EXPECT_EQ(
      *chat->render_json(R"({"messages": [{"role": "u", "content": 1}], "bos_token": "B", "tools": [1]})"),
      "B[u:1]</s>[1]");
}

TEST(ChatTemplate, ErrorsNameLineAndColumn) {
  const auto parse_error = ChatTemplate::parse("line one\n{% if true %}\n  {{ x + }}\n{% endif %}", "", "");
  ASSERT_FALSE(parse_error.ok());
  EXPECT_NE(parse_error.error().message.find("chat template 3:10:"), std::string::npos)
      << parse_error.error().message;

  const auto unclosed = ChatTemplate::parse("a\n{% for x in y %}\nno end", "", "");
  ASSERT_FALSE(unclosed.ok());
  EXPECT_NE(unclosed.error().message.find("'endfor'"), std::string::npos) << unclosed.error().message;
  EXPECT_NE(unclosed.error().message.find("2:1"), std::string::npos) << unclosed.error().message;

  const auto unknown_filter = ChatTemplate::parse("{{ x }}\n{{ y | frobnicate }}", "", "");
  ASSERT_FALSE(unknown_filter.ok());
  EXPECT_NE(unknown_filter.error().message.find("2:6: no filter named 'frobnicate'"), std::string::npos)
      << unknown_filter.error().message;

  // Columns count characters, not bytes.
  const auto render_error = render_once("é\n  ü{{ messages[0].content + 1 }}");
  ASSERT_FALSE(render_error.ok());
  EXPECT_NE(render_error.error().message.find("chat template 2:"), std::string::npos)
      << render_error.error().message;
  EXPECT_NE(render_error.error().message.find("can only concatenate str"), std::string::npos)
      << render_error.error().message;

  // raise_exception's message is passed on as is.
  const auto raised = render_once("{{ raise_exception('Roles must alternate') }}");
  ASSERT_FALSE(raised.ok());
  EXPECT_EQ(raised.error().message, "Roles must alternate");
}

TEST(ChatTemplate, StrftimeNowFormatsTheCurrentDate) {
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  char year[16];
  std::strftime(year, sizeof(year), "%Y", &local);
  const auto rendered = render_once("{{ strftime_now('%Y') }}|{{ strftime_now('%d %b %Y') | length }}");
  ASSERT_TRUE(rendered.ok()) << rendered.error().message;
  EXPECT_EQ(*rendered, std::string(year) + "|11");
}

// Hostile templates: each must end in an error, quickly, without crashing or exhausting memory.
TEST(ChatTemplate, HostileTemplatesFailCleanly) {
  const std::string deep_parens = std::string(5000, '(') + "1" + std::string(5000, ')');
  const std::string deep_ifs = [] {
    std::string s;
    for (int i = 0; i < 2000; ++i) s += "{% if true %}";
    return s;
  }();
  const std::string deep_not = "{{ " + [] {
    std::string s;
    for (int i = 0; i < 5000; ++i) s += "not ";
    return s;
  }() + "x }}";
  const std::vector<std::pair<std::string, std::string>> hostile = {
      {"deep parentheses", "{{ " + deep_parens + " }}"},
      {"deep blocks", deep_ifs},
      {"deep not", deep_not},
      {"huge nested loops",
       "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"},
      {"range too big", "{% for i in range(1000000000) %}{% endfor %}"},
      {"doubling string",
       "{% set ns = namespace(s='xy') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ "
       "ns.s|length }}"},
      {"string repetition", "{{ 'x' * 1000000000 }}"},
      {"output flood", "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}"},
      {"quadratic list growth",
       "{% set ns = namespace(l=[]) %}{% for i in range(100000) %}{% set ns.l = ns.l + [i] %}{% endfor %}"},
      {"deeply nested list",
       "{% set ns = namespace(l=[]) %}{% for i in range(1000) %}{% set ns.l = [ns.l] %}{% endfor %}{{ ns.l "
       "}}"},
      {"infinite macro recursion", "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"},
      {"mutual macro recursion",
       "{% macro a() %}{{ b() }}{% endmacro %}{% macro b() %}{{ a() }}{% endmacro %}{{ a() }}"},
      {"namespace cycle", "{% set ns = namespace() %}{% set ns.self = ns %}"},
      {"namespace in list cycle", "{% set ns = namespace() %}{% set ns.l = [ns] %}"},
      {"integer overflow", "{{ 9223372036854775807 + 1 }}"},
      {"integer literal overflow", "{{ 99999999999999999999 }}"},
      {"power overflow", "{{ 2 ** 100 }}"},
      {"unterminated variable", "{{ messages"},
      {"unterminated block", "{% if true"},
      {"unterminated comment", "{# never closed"},
      {"unterminated raw", "{% raw %}never closed"},
      {"unterminated string", "{{ 'abc }}"},
      {"unbalanced brackets", "{{ [1, 2 }}"},
      {"stray end tag", "{% endfor %}"},
      {"unsupported tag", "{% include 'other.jinja' %}"},
      {"unknown test", "{{ x is frobnicated }}"},
      {"break outside loop", "{% break %}"},
      {"lone surrogate escape", "{{ '\\ud800' }}"},
      {"huge template", std::string(2 << 20, 'x')},
  };
  for (const auto& [name, source] : hostile) {
    const auto rendered = render_once(source);
    EXPECT_FALSE(rendered.ok()) << name << " rendered " << rendered->size() << " bytes";
    if (!rendered.ok()) {
      EXPECT_FALSE(rendered.error().message.empty()) << name;
    }
  }
}

// Random bytes and random mutations of the real templates: parse and render must return, ok or not.
TEST(ChatTemplate, GarbageNeverCrashes) {
  std::mt19937 rng(20240611);
  std::vector<std::string> seeds;
  for (const auto& [name, info] : goldens()["templates"].items())
    seeds.push_back(read_file(template_path(info["file"])));
  const std::string alphabet = "{}%#-+()[]'\"|.,:~=!<> \n\tabcdefxyz0123456789_\\";
  int rendered_ok = 0, total = 0;
  for (int round = 0; round < 3000; ++round) {
    std::string source;
    if (round % 3 == 0) {
      const size_t length = rng() % 80;
      for (size_t i = 0; i < length; ++i)
        source.push_back(round % 2 ? alphabet[rng() % alphabet.size()] : static_cast<char>(rng()));
    } else {
      source = seeds[rng() % seeds.size()];
      const int edits = 1 + static_cast<int>(rng() % 4);
      for (int e = 0; e < edits && !source.empty(); ++e) {
        const size_t at = rng() % source.size();
        switch (rng() % 3) {
          case 0:
            source.erase(at, 1 + rng() % 8);
            break;
          case 1:
            source.insert(at, 1, alphabet[rng() % alphabet.size()]);
            break;
          default:
            source[at] = alphabet[rng() % alphabet.size()];
        }
      }
    }
    const auto rendered = render_once(
        source,
        R"({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}], "add_generation_prompt": true})");
    rendered_ok += rendered.ok() ? 1 : 0;
    ++total;
  }
  EXPECT_EQ(total, 3000);
  EXPECT_GT(rendered_ok, 100);  // many single edits leave a valid template
}

TEST(ChatTemplate, ConcurrentRendersShareOneTemplate) {
  auto chat = ChatTemplate::parse(read_file(template_path("qwen2.5-instruct.jinja")), "", "<|im_end|>");
  ASSERT_TRUE(chat.ok());
  const std::vector<ChatMessage> messages = {{"user", "hi"}, {"assistant", "hello"}, {"user", "bye"}};
  const std::string expected = *chat->render(messages, true);
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) mismatches[t] += *chat->render(messages, true) == expected ? 0 : 1;
    });
  }
  for (auto& thread : threads) thread.join();
  for (int m : mismatches) EXPECT_EQ(m, 0);
}

}  // namespace
}  // namespace kiln
