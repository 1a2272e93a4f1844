// tokenizer_config.json: the special-token strings, whether encoding adds BOS/EOS, and the chat
// template. Rendering a chat needs only this file, not the vocabulary.
#pragma once
#include <optional>
#include <string>
#include <string_view>

namespace deepmoe {

struct TokenizerConfig {
  std::string bos_token, eos_token, chat_template;
  std::optional<bool> add_bos_token, add_eos_token;  // absent: tokenizer.json's post-processor decides

  // From the file's text (empty text: all defaults). `source` names the file in errors.
  static TokenizerConfig parse(std::string_view text, const std::string& source);
  // `path`: a directory holding tokenizer_config.json, or a file beside it (tokenizer.json). A
  // missing file gives the defaults.
  static TokenizerConfig load(const std::string& path);
};

}  // namespace deepmoe
