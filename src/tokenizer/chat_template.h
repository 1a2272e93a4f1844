// A model's chat template (tokenizer_config.json's Jinja "chat_template") rendered the way
// transformers' apply_chat_template does: messages, add_generation_prompt, bos/eos tokens.
#pragma once
#include <nlohmann/json.hpp>

#include <memory>
#include <string>

namespace deepmoe {

namespace jinja {
struct Template;
}

class ChatTemplate {
 public:
  // Parses the template once; throws Error for syntax errors and unsupported statements.
  explicit ChatTemplate(const std::string& source);
  ~ChatTemplate();
  ChatTemplate(ChatTemplate&&) noexcept;

  // `messages`: a JSON array of {role, content, ...}. `extra` adds variables (tools, ...).
  // Throws Error for malformed messages, raise_exception() and unsupported constructs.
  std::string render(const nlohmann::json& messages, bool add_generation_prompt, const std::string& bos_token,
                     const std::string& eos_token, const nlohmann::json& extra = nlohmann::json::object()) const;

 private:
  std::unique_ptr<jinja::Template> template_;
};

}  // namespace deepmoe
