#include <nlohmann/json.hpp>

#include <cstdio>

#include "cli/common.h"
#include "core/error.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer_config.h"

namespace deepmoe::cli {

void add_chat_template_command(CLI::App& app) {
  struct Options {
    std::string tokenizer, messages, template_file;
    bool add_generation_prompt = false;
  };
  auto options = std::make_shared<Options>();
  auto* command = app.add_subcommand("chat-template", "Print a conversation rendered through the chat template");
  command->add_option("--tokenizer", options->tokenizer, "model or tokenizer directory (tokenizer_config.json)")
      ->required();
  command->add_option("--messages", options->messages, "JSON file: an array of {role, content}")->required();
  command->add_option("--template", options->template_file, "render this Jinja file instead of the model's template");
  command->add_flag("--add-generation-prompt", options->add_generation_prompt, "end with the assistant's turn opening");
  command->callback([options] {
    const TokenizerConfig config = TokenizerConfig::load(options->tokenizer);
    const std::string source =
        options->template_file.empty() ? config.chat_template : read_file(options->template_file);
    if (source.empty()) fail("{}: tokenizer_config.json has no chat_template (use --template)", options->tokenizer);
    nlohmann::json messages;
    try {
      messages = nlohmann::json::parse(read_file(options->messages));
    } catch (const nlohmann::json::exception& e) {
      fail("{}: not valid JSON: {}", options->messages, e.what());
    }
    const std::string text =
        ChatTemplate(source).render(messages, options->add_generation_prompt, config.bos_token, config.eos_token);
    std::fwrite(text.data(), 1, text.size(), stdout);
  });
}

}  // namespace deepmoe::cli
