// tokenizer_config.json comes with downloaded models: any text gives the special tokens and the
// chat template, or throws Error; the template it names then parses and renders or throws Error.
#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/error.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const nlohmann::json messages =
      nlohmann::json::parse(R"([{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}])");
  try {
    const auto config =
        deepmoe::TokenizerConfig::parse(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz");
    if (!config.chat_template.empty())
      (void)deepmoe::ChatTemplate(config.chat_template).render(messages, true, config.bos_token, config.eos_token);
  } catch (const deepmoe::Error&) {
  }
  return 0;
}
