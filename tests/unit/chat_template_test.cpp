// Error behaviour of the chat template renderer (its output is compared with @huggingface/jinja
// in tests/chat/compare_with_hf_jinja.sh): unsupported constructs fail and say which.
#include <gtest/gtest.h>

#include <chrono>

#include "core/error.h"
#include "tokenizer/chat_template.h"

namespace deepmoe {
namespace {

std::string render_error(const std::string& source, const nlohmann::json& messages = nlohmann::json::array()) {
  try {
    ChatTemplate(source).render(messages, false, "<s>", "</s>");
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

TEST(ChatTemplateTest, RendersAConversation) {
  const ChatTemplate t(
      "{% for m in messages %}{{ m.role }}: {{ m['content'] | trim }}\n{% endfor %}"
      "{% if add_generation_prompt %}assistant:{% endif %}");
  const auto messages =
      nlohmann::json::parse(R"([{"role":"user","content":" hi "},{"role":"assistant","content":"yo"}])");
  EXPECT_EQ(t.render(messages, true, "", ""), "user: hi\nassistant: yo\nassistant:");
}

// Where @huggingface/jinja departs from Python's Jinja, we follow Python (what transformers runs).
TEST(ChatTemplateTest, FollowsPythonJinjaWhereTheJavaScriptRendererDiffers) {
  const ChatTemplate t("{{ true }} {{ none }} {{ '🚀ab' | length }} {{ 'ab' * 2 }} {{ [1, 'x'] }} {{ {'k': 1.0} }}");
  EXPECT_EQ(t.render(nlohmann::json::array(), false, "", ""), "True None 3 abab [1, 'x'] {'k': 1.0}");
}

// A namespace that holds itself is a cycle of shared pointers: freed at the end of the render
// (the ASan stage of scripts/test fails this test with a leak otherwise; found by fuzzing).
TEST(ChatTemplateTest, ANamespaceThatHoldsItselfIsFreed) {
  const ChatTemplate t(
      "{% set ns = namespace(a=1, list=[]) %}{% set ns.a = ns %}{% set ns.list = [ns, ns] %}{{ ns.list | length }}");
  EXPECT_EQ(t.render(nlohmann::json::array(), false, "", ""), "2");
}

TEST(ChatTemplateTest, NamesWhatIsUnsupportedOrWrong) {
  EXPECT_NE(render_error("{{ 'x' | wordwrap }}").find("unsupported filter 'wordwrap'"), std::string::npos);
  EXPECT_NE(render_error("{% filter upper %}x{% endfilter %}").find("unsupported statement"), std::string::npos);
  EXPECT_NE(render_error("{{ x is prime }}").find("unsupported test 'prime'"), std::string::npos);
  EXPECT_NE(render_error("{{ 'x'.zfill(3) }}").find("unsupported method 'zfill'"), std::string::npos);
  EXPECT_NE(render_error("{% if true %}open").find("without '{% endif %}'"), std::string::npos);
  EXPECT_NE(render_error("{{ raise_exception('roles must alternate') }}").find("roles must alternate"),
            std::string::npos);
  EXPECT_NE(render_error("{{ 'unterminated }}").find("unterminated string"), std::string::npos);
  EXPECT_NE(render_error("{{ " + std::string(5000, '[') + " }}").find("nested deeper"), std::string::npos);
  EXPECT_NE(render_error(std::string(3000, '-') + "1").find("no error"), std::string::npos);  // plain text
  EXPECT_NE(render_error("{{ " + std::string(3000, '-') + "1 }}").find("nested deeper"), std::string::npos);
  EXPECT_NE(render_error("x", nlohmann::json::parse(R"([{"content": "no role"}])")).find("role"), std::string::npos);
}

// Templates come with downloaded models. Each of these once recursed once per level (a stack
// overflow, not an Error) or ran without bound.
std::string repeated(const std::string& piece, size_t times) {
  std::string out;
  for (size_t i = 0; i < times; ++i) out += piece;
  return out;
}

TEST(ChatTemplateTest, DeepConditionalChainsAreAnErrorNotAStackOverflow) {
  const std::string chain = "{{ " + repeated("1 if x else ", 100000) + "1 }}";
  EXPECT_NE(render_error(chain).find("nested deeper"), std::string::npos);
  EXPECT_EQ(ChatTemplate("{{ 1 if x else 2 if y else 3 }}").render(nlohmann::json::array(), false, "", ""), "3");
}

TEST(ChatTemplateTest, LongOperatorAndFilterChainsAreRefusedWhenParsed) {
  // Chains parse in a loop but evaluate (and free) recursively, once per link.
  const std::string chains[] = {
      "{{ 'a'" + repeated(" ~ 'a'", 200000) + " }}",
      "{{ 'X'" + repeated("|lower", 200000) + " }}",
      "{{ x" + repeated(".a", 200000) + " }}",
      "{{ x" + repeated("[0]", 200000) + " }}",
      "{{ 1" + repeated(" + 1", 200000) + " }}",
      // Parentheses do not reset the count: the tree is as high as its three chains together.
      "{{ ((1" + repeated(" * 1", 100) + ")" + repeated(" * 1", 100) + ")" + repeated(" * 1", 100) + " }}",
  };
  for (const std::string& chain : chains) {
    EXPECT_NE(render_error(chain).find("chained deeper than 256 levels"), std::string::npos) << chain.substr(0, 40);
  }
  EXPECT_EQ(ChatTemplate("{{ 'a'" + repeated(" ~ 'a'", 200) + " }}").render(nlohmann::json::array(), false, "", ""),
            std::string(201, 'a'));
}

TEST(ChatTemplateTest, NestedLoopsRunOutOfStepsWithinASecond) {
  const auto start = std::chrono::steady_clock::now();
  EXPECT_NE(render_error("{% for a in range(1000000) %}{% for b in range(1000000) %}{% endfor %}{% endfor %}")
                .find("chat template: more than 10000000 steps"),
            std::string::npos);
  EXPECT_NE(render_error("{{ range(100000) | unique | length }}").find("more than 10000000 steps"), std::string::npos);
  // Well under a second in a Release build; sanitizers make it ten times slower. Unbounded, it took hours.
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 30.0);
  EXPECT_EQ(render_error("{{ '' * 1000000000000000000 }}"), "no error");  // nothing to repeat: no steps
}

// A long needle that almost matches everywhere made std::string::find take the product of the
// lengths (hours here); strip() searched its characters once per character stripped.
TEST(ChatTemplateTest, SearchesTakeLinearTime) {
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(render_error("{{ ('a' * 100000 ~ 'b') in ('a' * 10000000) }}"), "no error");
  EXPECT_EQ(render_error("{{ ('a' * 10000000).count('a' * 100000 ~ 'b') }}"), "no error");
  EXPECT_EQ(render_error("{{ ('a' * 10000000).replace('a' * 100000 ~ 'b', '') | length }}"), "no error");
  EXPECT_EQ(render_error("{{ ('xy' * 1000).strip('y' * 10000000 ~ 'x') }}"), "no error");
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 30.0);  // as above
  const ChatTemplate t(
      "{{ ('ab' * 30).count('ab' * 10) }} {{ ('ab' * 30).replace('ab' * 10, 'Z') }} "
      "{{ ('q' * 40 ~ 'needle' ~ 'q' * 40).find('q' * 20 ~ 'needle') }} {{ 'xxyxaxx'.strip('xy') }}");
  EXPECT_EQ(t.render(nlohmann::json::array(), false, "", ""), "3 ZZZ 20 a");
}

TEST(ChatTemplateTest, StringsAndOutputStayUnder64MiB) {
  EXPECT_NE(render_error("{% set s = 'x' * 40000000 %}{{ s ~ s }}").find("a string longer than 64 MiB"),
            std::string::npos);
  // Doubling a string: the steps its copies cost run out first.
  EXPECT_NE(render_error("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
                         "{% endfor %}")
                .find("more than 10000000 steps"),
            std::string::npos);
  EXPECT_NE(render_error("{{ ('a' * 1000) | replace('a', 'x' * 1000000) }}").find("exceed 64 MiB"), std::string::npos);
  EXPECT_NE(render_error("{{ ('\n' * 1000) | indent(1000000) }}").find("exceed 64 MiB"), std::string::npos);
  EXPECT_NE(render_error("{{ [1, 2] | tojson(indent=1000000000) }}").find("exceed 64 MiB"), std::string::npos);
  EXPECT_NE(render_error("{{ range(100) | join('x' * 1000000) }}").find("join() would exceed 64 MiB"),
            std::string::npos);
  EXPECT_NE(render_error("{% for i in range(100) %}{{ 'x' * 1000000 }}{% endfor %}").find("output exceeds 64 MiB"),
            std::string::npos);
}

TEST(ChatTemplateTest, DeepOrSelfContainingValuesAreAnErrorAndAreFreed) {
  // A list wrapped 100000 times: printing it stops at the depth bound, freeing it does not recurse.
  const std::string wrap =
      "{% set ns = namespace(x=[]) %}{% for i in range(100000) %}{% set ns.x = [ns.x] %}{% endfor %}";
  EXPECT_EQ(ChatTemplate(wrap + "{{ ns.x | length }}").render(nlohmann::json::array(), false, "", ""), "1");
  EXPECT_NE(render_error(wrap + "{{ ns.x }}").find("nested deeper than 256 levels"), std::string::npos);
  EXPECT_NE(render_error(wrap + "{{ ns.x == ns.x }}").find("nested deeper than 256 levels"), std::string::npos);
  // The same without a namespace: each element holds the one before it.
  EXPECT_EQ(ChatTemplate("{% set l = [[]] %}{% for i in range(100000) %}{% set _ = l.append([l[-1]]) %}{% endfor %}"
                         "{{ l | length }}")
                .render(nlohmann::json::array(), false, "", ""),
            "100001");
  // A list that holds itself (a cycle the ASan stage would report as a leak if not broken).
  EXPECT_NE(render_error("{% set l = [] %}{% set _ = l.append(l) %}{{ l }}").find("nested deeper"), std::string::npos);
  EXPECT_NE(render_error("{% set l = [] %}{% set _ = l.append(l) %}{{ l | tojson }}").find("nested deeper"),
            std::string::npos);
}

TEST(ChatTemplateTest, MacrosCallingMacrosStopAtTheRenderDepth) {
  // 90 nested ifs inside a macro that calls itself 100 times: each bound alone allows it.
  const std::string deep = "{% macro f(n) %}" + repeated("{% if true %}", 90) + "{{ f(n - 1) if n > 0 }}" +
                           repeated("{% endif %}", 90) + "{% endmacro %}{{ f(100) }}";
  EXPECT_NE(render_error(deep).find("nested deeper than 512 levels"), std::string::npos);
  const std::string shallow = "{% macro f(n) %}{{ n }}{{ f(n - 1) if n > 0 }}{% endmacro %}{{ f(3) }}";
  EXPECT_EQ(ChatTemplate(shallow).render(nlohmann::json::array(), false, "", ""), "3210");
}

}  // namespace
}  // namespace deepmoe
