#!/usr/bin/env python3
"""Writes tests/tokenizer/chat_template_goldens.json: chat templates rendered by transformers.

Two parts, both rendered by the independent reference (transformers' apply_chat_template, i.e. jinja2
in transformers' ImmutableSandboxedEnvironment with trim_blocks / lstrip_blocks, raise_exception,
strftime_now, its tojson and namespace):

  cases    - every template in tests/tokenizer/chat_templates/*.jinja over ~14 conversations (system or
             not, single and multi turn, add_generation_prompt on and off, Unicode, newlines, quotes,
             empty content, conversations the template refuses with raise_exception, tool calls for
             the templates with tools branches). The tokenizer is PreTrainedTokenizerFast over
             ../shared/fixtures/hf-tiny/tiny-llama/tokenizer.json with the template and the model's
             bos / eos strings set; rendering never tokenizes (tokenize=False).
  snippets - small templates exercising one interpreter feature each (whitespace control, loops,
             filters, tests, slicing, errors), rendered by the same compiled-template function
             apply_chat_template uses.

Expected output is the exact text, or for a failure {"raised": true, "message": ...} when the template
called raise_exception (the C++ side must give the same message) and {"raised": false, "type": ...}
for any other jinja2 error (the C++ side must fail too). No case depends on today's date: Llama 3.1's
template falls back to its fixed "26 Jul 2024", and strftime_now is not rendered here.

Usage: .venv-chat/bin/python tools/make_chat_template_goldens.py [--shared ../shared]
"""
import argparse
import glob
import json
import os

import jinja2
import transformers
from transformers import PreTrainedTokenizerFast
from transformers.utils.chat_template_utils import _compile_jinja_template

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATE_DIR = os.path.join(ROOT, "tests", "tokenizer", "chat_templates")
OUTPUT = os.path.join(ROOT, "tests", "tokenizer", "chat_template_goldens.json")

# bos / eos strings of each model's tokenizer_config.json (Qwen's has no bos_token).
SPECIAL_TOKENS = {
    "llama-2-chat": ("<s>", "</s>"),
    "llama-3-instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "llama-3.1-instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "mistral-7b-instruct-v0.1": ("<s>", "</s>"),
    "mistral-7b-instruct-v0.3": ("<s>", "</s>"),
    "qwen2-instruct": ("", "<|im_end|>"),
    "qwen2.5-instruct": ("", "<|im_end|>"),
}


def msg(role, content):
    return {"role": role, "content": content}


UNICODE_TEXT = "Héllo «мир» 你好 🎉 naïve\nsecond line\twith tab \"double\" 'single' \\ back{slash} {{ x }} {% y %}"
CONVERSATIONS = [
    ("user_only", [msg("user", "Hello!")], True),
    ("user_only_no_prompt", [msg("user", "Hello!")], False),
    ("system_user", [msg("system", "You are a pirate."), msg("user", "Who are you?")], True),
    ("multi_turn", [msg("user", "Hi"), msg("assistant", "Hello, how can I help?"), msg("user", "Tell me a joke.")], True),
    ("system_multi_turn_ends_assistant",
     [msg("system", "Be brief."), msg("user", "2+2?"), msg("assistant", "4"), msg("user", "3+3?"),
      msg("assistant", "6")], False),
    ("unicode_newlines_quotes", [msg("system", UNICODE_TEXT), msg("user", UNICODE_TEXT),
                                 msg("assistant", "   padded answer with spaces   \n"), msg("user", "ok")], True),
    ("unicode_whitespace", [msg("user", "\u3000\u00a0 \t wide spaces around \u2003\n "),
                            msg("assistant", "\u2028line separator\u2029")], True),
    ("empty_content", [msg("system", ""), msg("user", ""), msg("assistant", ""), msg("user", "")], True),
    ("special_token_text", [msg("user", "<s>[INST] not really [/INST]</s> <|im_start|>user <|eot_id|>")], True),
    ("long_conversation",
     [m for i in range(8) for m in (msg("user", f"question {i}?"), msg("assistant", f"answer {i}."))]
     + [msg("user", "last")], True),
    ("system_only", [msg("system", "Only a system prompt.")], True),
    ("two_users_in_a_row", [msg("user", "first"), msg("user", "second")], True),
    ("assistant_first", [msg("assistant", "I speak first"), msg("user", "ok")], True),
    ("unknown_role", [msg("user", "hi"), msg("tool", "42")], True),
    ("no_messages", [], True),
]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"},
                                                        "unit": {"type": "string", "enum": ["c", "f"]}},
                       "required": ["city"]},
    },
}
TOOL_CONTEXTS = {
    "qwen2.5-instruct": [
        ("tools_system", {"messages": [msg("system", "Use tools."), msg("user", "Weather in Paris?")],
                          "tools": [WEATHER_TOOL], "add_generation_prompt": True}),
        ("tools_default_system", {"messages": [msg("user", "Weather in Paris?")], "tools": [WEATHER_TOOL],
                                  "add_generation_prompt": True}),
        ("tool_call_and_results",
         {"messages": [msg("user", "Weather in Paris and Oslo?"),
                       {"role": "assistant", "content": "",
                        "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                                       {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "c"}}}]},
                       msg("tool", "18 degrees"), msg("tool", "3 degrees"), msg("assistant", "Paris 18, Oslo 3.")],
          "tools": [WEATHER_TOOL], "add_generation_prompt": False}),
        ("null_content_dropped",
         {"messages": [msg("user", "Weather?"),
                       {"role": "assistant", "content": None,
                        "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]},
                       msg("tool", "20 degrees")],
          "add_generation_prompt": True}),
    ],
    "llama-3.1-instruct": [
        ("tools_in_user_message", {"messages": [msg("system", "Use tools."), msg("user", "Weather in Paris?")],
                                   "tools": [WEATHER_TOOL], "add_generation_prompt": True}),
        ("tools_in_system", {"messages": [msg("user", "Weather in Paris?")], "tools": [WEATHER_TOOL],
                             "tools_in_user_message": False, "add_generation_prompt": True}),
        ("tool_call_and_result",
         {"messages": [msg("user", "Weather in Paris?"),
                       {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                       msg("tool", "18 degrees"), msg("tool", {"temperature": 18, "ok": True})],
          "add_generation_prompt": True, "date_string": "01 Jan 2025"}),
        ("builtin_tools", {"messages": [msg("user", "Search for kiln."),
                                        {"role": "assistant", "tool_calls": [{"function": {"name": "brave_search", "arguments": {"query": "kiln"}}}]}],
                           "builtin_tools": ["brave_search", "code_interpreter", "wolfram_alpha"], "add_generation_prompt": False}),
        ("tools_without_messages", {"messages": [], "tools": [WEATHER_TOOL], "add_generation_prompt": True}),
    ],
    "mistral-7b-instruct-v0.3": [
        ("tools", {"messages": [msg("system", "Be helpful."), msg("user", "Weather in Paris?")],
                   "tools": [WEATHER_TOOL], "add_generation_prompt": True}),
        ("tool_call_and_result",
         {"messages": [msg("user", "Weather in Paris?"),
                       {"role": "assistant", "tool_calls": [{"id": "abcdefghi", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                       {"role": "tool", "tool_call_id": "abcdefghi", "content": "18 degrees"}, msg("assistant", " It is 18. ")],
          "add_generation_prompt": False}),
        ("bad_tool_call_id",
         {"messages": [msg("user", "Weather?"),
                       {"role": "assistant", "tool_calls": [{"id": "short", "function": {"name": "get_weather", "arguments": {}}}]}],
          "add_generation_prompt": False}),
    ],
}

# One interpreter feature per snippet: (name, template source, context).
SNIPPETS = [
    ("text_only", "plain text\n", {}),
    ("trailing_newline_dropped_once", "a\n\n", {}),
    ("crlf_normalized", "a\r\nb\rc{{ 'x\r\ny' }}", {}),
    ("trim_blocks", "{% if true %}\nyes\n{% endif %}\nafter", {}),
    ("lstrip_blocks", "  {% if true %}\n    kept\n  {% endif %}\nend", {}),
    ("lstrip_not_for_output", "  {{ 'x' }}\n  {% if true %}y{% endif %}", {}),
    ("whitespace_minus", "a   {{- 'b' -}}   c\n  {%- if true -%}  d  {%- endif -%}  \n e", {}),
    ("whitespace_plus", "  {%+ if true %}x{% endif +%}\nafter", {}),
    ("comments", "a {# comment #}b\n  {#- strip -#}  c\n{# line #}\nd", {}),
    ("raw_block", "{% raw %}{{ not evaluated }}{% endraw %}", {}),
    ("string_escapes", "{{ 'tab\\tnl\\nq\\'dq\\\"bs\\\\ hex\\x41 u\\u00e9 oct\\101 unknown\\d' }}", {}),
    ("string_concat_literals", "{{ 'a' \"b\" 'c' }}", {}),
    ("numbers", "{{ 1 + 2 * 3 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ 1_000 }} {{ 0x1f }}", {}),
    ("floats", "{{ 0.1 + 0.2 }} {{ 1e16 }} {{ 1.5e-5 }} {{ 2.0 }} {{ 10 / 4 }} {{ 1 / 3 }} {{ -0.0 }} {{ 3.0 * 2 }}", {}),
    ("comparisons", "{{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 'a' < 'b' }} {{ [1, 2] == [1, 2] }} {{ 1 == 1.0 }} {{ 'x' != 'y' }}", {}),
    ("logic", "{{ 0 or 'fallback' }} {{ 'x' and 'y' }} {{ not none }} {{ none is none }} {{ 1 if false else 2 }}|{{ 'a' if false }}|", {}),
    ("in_operator", "{{ 'ell' in 'hello' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 3 not in [1] }}", {}),
    ("concat_tilde", "{{ 'a' ~ 1 ~ none ~ true ~ undefined_name }}", {}),
    ("print_values", "{{ none }} {{ true }} {{ [1, 'a', none, 1.5] }} {{ {'k': 'v', 'n': [true]} }} {{ (1, 'x') }} {{ ('one',) }} {{ \"it's\" }}", {}),
    ("list_and_slices", "{{ [1,2,3,4,5][1:3] }} {{ [1,2,3][::-1] }} {{ 'hello'[1:] }} {{ 'hello'[-3:] }} {{ 'héllo'[::2] }} {{ [1,2,3][-1] }} {{ 'abc'[5] }}|", {}),
    ("attribute_and_item", "{{ m.role }} {{ m['content'] }} {{ m.missing }}|{{ m['missing'] is defined }} {{ m.items() | list }}", {"m": msg("user", "hi")}),
    ("for_loop_vars", "{% for x in ['a', 'b', 'c'] %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.previtem }}{{ loop.nextitem }};{% endfor %}", {}),
    ("for_else", "{% for x in [] %}{{ x }}{% else %}empty{% endfor %}", {}),
    ("for_filter", "{% for x in range(10) if x is odd %}{{ loop.index }}:{{ x }}/{{ loop.length }} {% endfor %}", {}),
    ("for_unpack", "{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}{% for a, b in [[1, 2], (3, 4)] %}{{ a + b }}{% endfor %}", {}),
    ("for_over_dict_and_string", "{% for k in {'x': 1, 'y': 2} %}{{ k }}{% endfor %}{% for c in 'héllo' %}[{{ c }}]{% endfor %}", {}),
    ("loop_scoping", "{% set y = 0 %}{% for i in [1, 2] %}{{ y }}{% set y = i %}{{ y }}{% endfor %}{{ y }}", {}),
    ("if_scoping", "{% if true %}{% set z = 3 %}{% endif %}{{ z }}", {}),
    ("namespace", "{% set ns = namespace(count=0, found=false) %}{% for i in range(5) %}{% set ns.count = ns.count + i %}{% if i == 3 %}{% set ns.found = true %}{% endif %}{% endfor %}{{ ns.count }} {{ ns.found }}", {}),
    ("loop_controls", "{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i == 5 %}{% break %}{% endif %}{{ i }}{% endfor %}", {}),
    ("nested_loops", "{% for i in range(3) %}{% for j in range(i) %}{{ i }}{{ j }}{{ loop.index }} {% endfor %}|{{ loop.index }}{% endfor %}", {}),
    ("set_block", "{% set greeting %}Hello {{ name }}!{% endset %}[{{ greeting }}]{% set up | upper %}shout{% endset %}{{ up }}", {"name": "Ann"}),
    ("set_tuple", "{% set a, b = [1, 2] %}{{ b }}{{ a }}", {}),
    ("macro", "{% macro tag(name, value='none') %}<{{ name }}={{ value }}{{ suffix }}>{% endmacro %}{% set suffix = '!' %}{{ tag('a') }}{{ tag('b', 2) }}{{ tag('c', value=[1]) }}", {}),
    ("macro_recursion", "{% macro render(x) %}{% if x is mapping %}{{ '{' }}{% for k, v in x.items() %}{{ k }}:{{ render(v) }},{% endfor %}{{ '}' }}{% else %}{{ x }}{% endif %}{% endmacro %}{{ render({'a': {'b': {'c': 1}}, 'd': 2}) }}", {}),
    ("filters_strings", "{{ '  x  ' | trim }}|{{ 'xxhixx' | trim('x') }}|{{ 'abc' | upper }}|{{ 'ABC' | lower }}|{{ 'hello wORLD-foo(bar)' | title }}|{{ 'hELLO' | capitalize }}|{{ 'a-b-c' | replace('-', '+') }}|{{ 'aaa' | replace('a', 'b', 2) }}|{{ 'héllo' | length }}|{{ 'abc' | reverse }}", {}),
    ("filters_lists", "{{ [3, 1, 2] | sort }} {{ ['b', 'A', 'c'] | sort }} {{ [1, 2, 3] | first }} {{ [1, 2, 3] | last }} {{ [1, 2] | join('-') }} {{ [1, 2, 3] | sum }} {{ 'abc' | list }} {{ [] | first is defined }} {{ [1, 2, 3] | reverse | list }}", {}),
    ("filters_default", "{{ missing | default('d') }} {{ missing | d('x') }} {{ '' | default('e', true) }} {{ '' | default('e') }}| {{ none | default('n') }}", {}),
    ("filters_convert", "{{ '42' | int }} {{ '4.7' | int }} {{ 'x' | int }} {{ 'x' | int(7) }} {{ 3.9 | int }} {{ '2.5' | float }} {{ 1 | string }}{{ [1] | string }} {{ -3 | abs }} {{ {'a': 1} | items | list }}", {}),
    ("filter_tojson", "{{ {'a': [1, 2.5, 'é\\n\"'], 'b': none, 'c': true} | tojson }}|{{ {'a': {'b': [1, {}], 'c': []}} | tojson(indent=4) }}|{{ 'x' | tojson }}|{{ {'b': 1, 'a': 2} | tojson(sort_keys=true) }}|{{ ['é'] | tojson(ensure_ascii=true) }}|{{ [1,2] | tojson(separators=(',', ':')) }}", {}),
    ("filter_selectattr_map", "{{ msgs | selectattr('role', 'equalto', 'user') | map(attribute='content') | join(',') }}|{{ msgs | rejectattr('role', 'eq', 'user') | list | length }}|{{ msgs | map(attribute='role') | list }}|{{ [1, 2, 3, 4] | select('even') | list }}|{{ [1, 0, 2] | reject | list }}|{{ ['a', 'b'] | map('upper') | list }}|{{ msgs | selectattr('name') | list }}", {"msgs": [msg("user", "u1"), msg("assistant", "a1"), msg("user", "u2")]}),
    ("filter_indent", "{{ 'a\\nb\\n\\nc' | indent }}|{{ 'a\\nb' | indent(2, true) }}|{{ 'a\\n\\nb' | indent('>', blank=true) }}", {}),
    ("tests", "{{ 1 is number }} {{ true is number }} {{ 'a' is string }} {{ {} is mapping }} {{ [] is iterable }} {{ 'x' is sequence }} {{ none is none }} {{ x is undefined }} {{ 3 is odd }} {{ 4 is even }} {{ 9 is divisibleby 3 }} {{ 1 is integer }} {{ 1.0 is float }} {{ true is boolean }} {{ true is true }} {{ 0 is false }} {{ 'ab' is lower }} {{ 2 is eq 2 }} {{ 2 is ne(3) }} {{ 1 is lt 2 }} {{ 'a' is in 'cat' }} {{ x is not defined }} {{ undefined_value is iterable }} {{ range is callable }}", {}),
    ("string_methods", "{{ '  a b  '.strip() }}|{{ 'xxaxx'.lstrip('x') }}|{{ 'a,b,,c'.split(',') }}|{{ ' a  b '.split() }}|{{ 'a b c'.split(' ', 1) }}|{{ 'a b c'.rsplit(' ', 1) }}|{{ 'hello'.startswith('he') }}|{{ 'hello'.endswith(('x', 'lo')) }}|{{ 'Hello World'.upper() }}|{{ \"it's a test\".title() }}|{{ 'abc'.replace('b', 'B') }}|{{ 'héllo'.find('l') }}|{{ 'banana'.count('an') }}|{{ ', '.join(['x', 'y']) }}|{{ '42'.isdigit() }}|{{ 'a\\nb\\r\\nc'.splitlines() }}", {}),
    ("dict_methods", "{{ d.keys() | list }} {{ d.values() | list }} {{ d.get('a') }} {{ d.get('z', 'dflt') }} {{ d.get('z') }} {{ d | length }} {{ d['a'] }}", {"d": {"a": 1, "b": [2]}}),
    ("unicode_whitespace_strip", "[{{ s.strip() }}][{{ s | trim }}][{{ s.split() }}]", {"s": "\u3000\u00a0x y\u2003\u205f"}),
    ("precedence", "{{ -3|abs }} {{ 2 ** 3 ** 2 }} {{ 2 * 3 ~ 4 }} {{ not 1 == 2 }} {{ 1 + 2 if true else 3 }} {{ [1, 2, 3]|length > 2 and 'y' or 'n' }} {{ - 2 ** 2 }} {{ 'a' ~ 'b' | upper }}", {}),
    ("lexer_edges", "{{-1}}|{{ {'a': {'b': 1}} }}|{{ '}}' }}|{ not a tag }|{{ 0o17 }} {{ 0b101 }} {{ 1e3 }} {{ 1.5e2 }} {{ 1_0.5 }} {{ 0x_ff }}", {}),
    ("lstrip_edges", "{% if true %}x{% endif %}\n   {# comment #}\n\t{% if true %}\n  y\n  {%- endif %}\n\u3000{% if true %}z{% endif %}\n  text {% if true %}w{% endif %}", {}),
    ("raw_with_whitespace_control", "a  {%- raw -%}  {{ x }}  {%- endraw -%}  b\n  {% raw %}\n r {% endraw %}\nc", {}),
    ("dict_literal_and_access", "{% set d = {'k': 1, \"q\": [1, {'z': 'deep'}]} %}{{ d.q[1].z }}{{ d['q'][0] }}{{ d.q.1.z }}{{ d.k.missing is defined }}", {}),
    ("tojson_special", "{{ 'a\\u0000b\\x7f\\u2028\\U0001F600' | tojson }}|{{ 1e100 | tojson }}|{{ [1.0, -0.5, 100000000000000000000.0] | tojson }}|{{ '\\U0001F600' | tojson(ensure_ascii=true) }}", {}),
    ("string_repr_edges", "{{ ['it\\'s', 'say \"hi\"', 'both \\' \"', 'tab\\t', 'nl\\n', '\\x00', 'é', '\\u00a0', '\\\\'] }}", {}),
    ("loop_cycle_and_conditional", "{% for i in range(5) %}{{ loop.cycle('a', 'b') }}{% endfor %}[{{ 'x' if false }}]", {}),
    ("undefined_behaviour", "{{ missing }}|{{ missing is defined }}|{{ missing | length }}|{{ missing | default('d') }}|{% for x in missing %}{{ x }}{% endfor %}|{{ missing | list }}|{{ missing ~ 'a' }}|{{ missing | trim }}|{{ missing is none }}", {}),
    ("content_with_tags_is_data", "{{ m }}", {"m": "{{ not a tag }} {% if %} {# c #}"}),
    ("message_fields", "{% for m in ms %}{{ m.role }}={{ m.content | tojson }}{{ m.tool_calls is defined }};{% endfor %}", {"ms": [msg("user", "a\"b"), {"role": "assistant", "content": None, "tool_calls": [{"id": "x"}]}]}),
    ("raise_exception", "before{{ raise_exception('custom failure: ' ~ 42) }}after", {}),
    ("error_undefined_attribute_of_undefined", "{{ missing.attr }}", {}),
    ("error_undefined_in_arithmetic", "{{ missing + 1 }}", {}),
    ("error_str_plus_int", "{{ 'a' + 1 }}", {}),
    ("error_division_by_zero", "{{ 1 / 0 }}", {}),
    ("error_list_append_unsafe", "{% set xs = [] %}{{ xs.append(1) }}", {}),
    ("error_unknown_filter", "{{ 'x' | no_such_filter }}", {}),
    ("error_unclosed_block", "{% if true %}never closed", {}),
    ("error_unclosed_tag", "{{ 'x' ", {}),
    ("error_range_too_big", "{% for i in range(100001) %}{% endfor %}", {}),
    ("error_not_iterable", "{% for i in 5 %}{% endfor %}", {}),
    ("error_call_non_function", "{{ 'x'() }}", {}),
    ("error_bad_syntax", "{{ 1 + }}", {}),
    ("error_unbalanced", "{{ (1 + 2 }}", {}),
]


# Snippets render through ChatTemplate::render_json on the C++ side, which needs a conversation.
SNIPPET_MESSAGES = [{"role": "user", "content": "unused"}]


def classify_error(error):
    if type(error) is jinja2.exceptions.TemplateError:  # raise_exception() raises exactly this class
        return {"raised": True, "message": str(error)}
    return {"raised": False, "type": type(error).__name__, "message": str(error)}


def render_case(tokenizer, context):
    context = dict(context)
    messages = context.pop("messages")
    add_generation_prompt = context.pop("add_generation_prompt", False)
    tools = context.pop("tools", None)
    try:
        return {"expected": tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                                          add_generation_prompt=add_generation_prompt, **context)}
    except Exception as error:  # noqa: BLE001 - any jinja2 failure is a golden
        return {"error": classify_error(error)}


def render_snippet(source, context):
    try:
        template = _compile_jinja_template(source)
        variables = {"messages": SNIPPET_MESSAGES, "tools": None, "documents": None, "bos_token": "", "eos_token": "",
                     **context}
        return {"expected": template.render(**variables)}
    except Exception as error:  # noqa: BLE001
        return {"error": classify_error(error)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=os.path.join(ROOT, "..", "shared"))
    args = parser.parse_args()
    tokenizer_file = os.path.join(args.shared, "fixtures", "hf-tiny", "tiny-llama", "tokenizer.json")

    templates, cases = {}, []
    for path in sorted(glob.glob(os.path.join(TEMPLATE_DIR, "*.jinja"))):
        name = os.path.basename(path)[: -len(".jinja")]
        with open(path, encoding="utf-8", newline="") as f:
            source = f.read()
        bos, eos = SPECIAL_TOKENS[name]
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=tokenizer_file, bos_token=bos or None, eos_token=eos)
        tokenizer.chat_template = source
        templates[name] = {"file": os.path.basename(path), "bos_token": bos, "eos_token": eos}
        contexts = [(case, {"messages": messages, "add_generation_prompt": prompt})
                    for case, messages, prompt in CONVERSATIONS]
        contexts += TOOL_CONTEXTS.get(name, [])
        for case, context in contexts:
            plain = set(context) <= {"messages", "add_generation_prompt"} and all(
                set(m) == {"role", "content"} and isinstance(m["content"], str) for m in context["messages"])
            cases.append({"template": name, "name": case, "plain": plain, "context": context,
                          **render_case(tokenizer, context)})

    snippets = [{"name": name, "source": source, "context": {"messages": SNIPPET_MESSAGES, **context},
                 **render_snippet(source, context)}
                for name, source, context in SNIPPETS]

    golden = {
        "generator": "tools/make_chat_template_goldens.py",
        "reference": f"transformers {transformers.__version__} apply_chat_template, jinja2 {jinja2.__version__}",
        "templates": templates,
        "cases": cases,
        "snippets": snippets,
    }
    with open(OUTPUT, "w", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=False, indent=1)
        f.write("\n")
    failures = sum("error" in c for c in cases)
    print(f"wrote {OUTPUT}: {len(templates)} templates, {len(cases)} cases ({failures} errors), "
          f"{len(snippets)} snippets")


if __name__ == "__main__":
    main()
