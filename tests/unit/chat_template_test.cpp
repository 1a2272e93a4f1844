// Error behaviour of the chat template renderer (its output is compared with @huggingface/jinja
// in tests/chat/compare_with_hf_jinja.sh): unsupported constructs fail and say which.
#include <gtest/gtest.h>

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
  const ChatTemplate t("{% for m in messages %}{{ m.role }}: {{ m['content'] | trim }}\n{% endfor %}"
                       "{% if add_generation_prompt %}assistant:{% endif %}");
  const auto messages = nlohmann::json::parse(R"([{"role":"user","content":" hi "},{"role":"assistant","content":"yo"}])");
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
  const ChatTemplate t("{% set ns = namespace(a=1, list=[]) %}{% set ns.a = ns %}{% set ns.list = [ns, ns] %}{{ ns.list | length }}");
  EXPECT_EQ(t.render(nlohmann::json::array(), false, "", ""), "2");
}

TEST(ChatTemplateTest, NamesWhatIsUnsupportedOrWrong) {
  EXPECT_NE(render_error("{{ 'x' | wordwrap }}").find("unsupported filter 'wordwrap'"), std::string::npos);
  EXPECT_NE(render_error("{% filter upper %}x{% endfilter %}").find("unsupported statement"), std::string::npos);
  EXPECT_NE(render_error("{{ x is prime }}").find("unsupported test 'prime'"), std::string::npos);
  EXPECT_NE(render_error("{{ 'x'.zfill(3) }}").find("unsupported method 'zfill'"), std::string::npos);
  EXPECT_NE(render_error("{% if true %}open").find("without '{% endif %}'"), std::string::npos);
  EXPECT_NE(render_error("{{ raise_exception('roles must alternate') }}").find("roles must alternate"), std::string::npos);
  EXPECT_NE(render_error("{{ 'unterminated }}").find("unterminated string"), std::string::npos);
  EXPECT_NE(render_error("{{ " + std::string(5000, '[') + " }}").find("nested deeper"), std::string::npos);
  EXPECT_NE(render_error(std::string(3000, '-') + "1").find("no error"), std::string::npos);  // plain text
  EXPECT_NE(render_error("{{ " + std::string(3000, '-') + "1 }}").find("nested deeper"), std::string::npos);
  EXPECT_NE(render_error("x", nlohmann::json::parse(R"([{"content": "no role"}])")).find("role"), std::string::npos);
}

}  // namespace
}  // namespace deepmoe
