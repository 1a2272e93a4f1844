#include "tokenizer/chat_template.h"

#include "core/error.h"
#include "tokenizer/jinja/ast.h"
#include "tokenizer/jinja/render.h"

namespace deepmoe {

ChatTemplate::ChatTemplate(const std::string& source)
    : template_(std::make_unique<jinja::Template>(jinja::parse(source))) {}
ChatTemplate::~ChatTemplate() = default;
ChatTemplate::ChatTemplate(ChatTemplate&&) noexcept = default;

std::string ChatTemplate::render(const nlohmann::json& messages, bool add_generation_prompt,
                                 const std::string& bos_token, const std::string& eos_token,
                                 const nlohmann::json& extra) const {
  if (!messages.is_array()) fail("messages must be a JSON array of {{\"role\", \"content\"}} objects");
  for (size_t i = 0; i < messages.size(); ++i) {
    const auto& m = messages[i];
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
      fail("messages[{}] must be an object with a string \"role\"", i);
    if (m.contains("content") && !m["content"].is_string() && !m["content"].is_null() && !m["content"].is_array())
      fail("messages[{}].content must be a string, null or a list of parts", i);
  }
  nlohmann::json context = extra.is_object() ? extra : nlohmann::json::object();
  context["messages"] = messages;
  context["add_generation_prompt"] = add_generation_prompt;
  context["bos_token"] = bos_token;
  context["eos_token"] = eos_token;
  return jinja::render(*template_, context);
}

}  // namespace deepmoe
