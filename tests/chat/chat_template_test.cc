// The renderer's semantics against values printed by Python jinja2 configured as transformers
// configures it, and its refusals: unsupported constructs at load time with their place,
// raise_exception and misuse of undefined values at render time.

#include "runtime/chat/chat_template.h"

#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace tessera::chat {
namespace {

absl::StatusOr<std::string> RenderText(
    const std::string& source,
    const nlohmann::ordered_json& context = nlohmann::ordered_json::object()) {
  auto tmpl = ChatTemplate::Parse(source, "t");
  if (!tmpl.ok()) return tmpl.status();
  return tmpl->Render(context);
}

std::string Ok(const std::string& source,
               const nlohmann::ordered_json& context = nlohmann::ordered_json::object()) {
  auto r = RenderText(source, context);
  EXPECT_TRUE(r.ok()) << source << ": " << r.status();
  return r.ok() ? *r : "";
}

void ExpectParseError(const std::string& source, const std::string& message) {
  auto tmpl = ChatTemplate::Parse(source, "t");
  ASSERT_FALSE(tmpl.ok()) << source;
  EXPECT_EQ(tmpl.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(tmpl.status().message(), message) << source;
}

TEST(ChatTemplateTest, UnsupportedConstructsFailAtParseWithTheirPlace) {
  ExpectParseError("{% macro f() %}x{% endmacro %}", "t:1:4: unsupported construct 'macro'");
  ExpectParseError("a\n  {{ x | wordcount }}",
                   "t:2:10: unsupported construct 'filter 'wordcount''");
  ExpectParseError("{{ strftime_now('%Y') }}", "t:1:4: unsupported construct 'strftime_now()'");
  ExpectParseError("{{ 'a'.format(1) }}", "t:1:7: unsupported construct '.format()'");
  ExpectParseError("{% for m in messages %}{{ loop.cycle('a', 'b') }}{% endfor %}",
                   "t:1:31: unsupported construct 'loop.cycle'");
  ExpectParseError("{% for m in x recursive %}{% endfor %}",
                   "t:1:15: unsupported construct 'recursive for loop'");
  ExpectParseError("{% set x %}y{% endset %}", "t:1:4: unsupported construct 'set block'");
  ExpectParseError("{% include 'other' %}", "t:1:4: unsupported construct 'include'");
  ExpectParseError("{{ x is sameas y }}", "t:1:9: unsupported construct 'test 'sameas''");
  ExpectParseError("{{ (1, 2) }}", "t:1:5: unsupported construct 'tuple literal'");
  ExpectParseError("{{ 1 < 2 < 3 }}", "t:1:10: unsupported construct 'chained comparison'");
  ExpectParseError("{% if x %}", "t:1:11: template ended inside a block; expected 'elif'");
  ExpectParseError("{{ 'abc }}", "t:1:4: string literal is not closed");
  ExpectParseError("{% break %}", "t:1:4: 'break' outside a loop");
}

TEST(ChatTemplateTest, RaiseExceptionFailsTheRenderWithItsMessage) {
  auto r = RenderText("a{{ raise_exception('Roles must alternate') }}b");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r.status().message(), "t:1:5: raise_exception: Roles must alternate");
}

TEST(ChatTemplateTest, UndefinedBehavesAsJinjaDefaultUndefined) {
  EXPECT_EQ(
      Ok("[{{ missing }}]{% if missing %}T{% else %}F{% endif %}{{ missing is defined }}"
         "{{ missing|length }}{% for x in missing %}x{% else %}E{% endfor %}{{ missing ~ 'a' }}"),
      "[]FFalse0Ea");
  EXPECT_EQ(
      Ok("[{{ m.b }}{{ m['c'] }}{{ m.b is defined }}{{ m.b|default('d') }}]", {{"m", {{"a", 1}}}}),
      "[Falsed]");
  auto attr = RenderText("{{ missing.attr }}");
  ASSERT_FALSE(attr.ok());
  EXPECT_EQ(attr.status().message(), "t:1:11: UndefinedError: 'missing' is undefined");
  auto add = RenderText("{{ missing + 'a' }}");
  ASSERT_FALSE(add.ok());
  EXPECT_NE(add.status().message().find("'missing' is undefined"), std::string::npos);
}

TEST(ChatTemplateTest, ForLoopScopingAndLoopVariables) {
  EXPECT_EQ(Ok("{% set x = 'outer' %}{% for i in [1,2] %}[{{ x }}]{% set x = i %}({{x}}){% endfor "
               "%}{{ x }}"),
            "[outer](1)[outer](2)outer");
  EXPECT_EQ(Ok("{% set ns = namespace(a=1) %}{% for i in [1,2] %}{% set ns.a = ns.a + i %}{% "
               "endfor %}{{ ns.a }}"),
            "4");
  EXPECT_EQ(Ok("{% for a in [3,4,5] if a != 4 %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}"
               "{{ loop.last }}{{ loop.length }};{% endfor %}"),
            "10TrueFalse2;21FalseTrue2;");
  EXPECT_EQ(Ok("{% for k, v in {'b': 1, 'a': 2}.items() %}{{ k }}={{ v }},{% endfor %}"),
            "b=1,a=2,");
  EXPECT_EQ(Ok("{% for i in range(5) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 3 %}{% "
               "break %}{% endif %}{{ i }}{% endfor %}"),
            "02");
}

TEST(ChatTemplateTest, PythonValueSemantics) {
  EXPECT_EQ(Ok("{{ 1/2 }} {{ 4/2 }} {{ 7//2 }} {{ -7 % 3 }} {{ 1e20 }} {{ 0.0001 }} {{ 1e16 }} {{ "
               "1.5e15 }}"),
            "0.5 2.0 3 2 1e+20 0.0001 1e+16 1500000000000000.0");
  EXPECT_EQ(Ok("{{ [1, 'a', None, True, 1.5, {'k': \"it's\"}] }}"),
            "[1, 'a', None, True, 1.5, {'k': \"it's\"}]");
  EXPECT_EQ(Ok("{{ 'abc'[::-1] }} {{ [1,2,3][1:] }} {{ 'héllo'[1] }} {{ 'héllo'|length }}"),
            "cba [2, 3] é 5");
  EXPECT_EQ(Ok("{{ 1 == 1.0 }} {{ true == 1 }} {{ 'a' < 'b' }} {{ 'ell' in 'hello' }} {{ 2 not in "
               "[1] }}"),
            "True True True True True");
  EXPECT_EQ(Ok("{{ none }} {{ x or 'y' }} {{ 0 and 1 }} {{ 'a' if false }}|"), "None y 0 |");
  EXPECT_EQ(Ok("{{ ' a b  '.strip() }}|{{ 'a b  c'.split() }}|{{ 'a,b'.split(',') }}|{{ 'hello "
               "world'.title() }}|{{ 'hello-world x'|title }}"),
            "a b|['a', 'b', 'c']|['a', 'b']|Hello World|Hello-World X");
  EXPECT_EQ(Ok("{{ '\\u00e9\\x41\\n'|tojson }}"), "\"éA\\n\"");
}

TEST(ChatTemplateTest, TojsonIsTransformersJsonDumps) {
  const nlohmann::ordered_json context = {
      {"d", {{"b", {1, nlohmann::ordered_json::object()}}, {"a", "é\""}}}};
  EXPECT_EQ(Ok("{{ d|tojson }}", context), "{\"b\": [1, {}], \"a\": \"é\\\"\"}");
  EXPECT_EQ(Ok("{{ d|tojson(indent=2) }}", context),
            "{\n  \"b\": [\n    1,\n    {}\n  ],\n  \"a\": \"é\\\"\"\n}");
  EXPECT_EQ(Ok("{{ d|tojson(sort_keys=true) }}", context), "{\"a\": \"é\\\"\", \"b\": [1, {}]}");
}

TEST(ChatTemplateTest, WhitespaceControlAsTrimAndLstripBlocks) {
  EXPECT_EQ(Ok("<\n  {% if true %}\n  yes\n  {% endif %}\n>"), "<\n  yes\n>");
  EXPECT_EQ(Ok("a  {{- 'b' -}}  \n c"), "abc");
  EXPECT_EQ(Ok("a\n  {#- note -#}\n  b"), "ab");
  EXPECT_EQ(Ok("x  {%+ if true %}y{% endif +%}\nz\n"), "x  y\nz");
}

}  // namespace
}  // namespace tessera::chat
