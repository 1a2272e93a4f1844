// Chat templates come with downloaded models: any template text renders or throws Error, within
// bounded time, memory and stack (the parser bounds nesting and chains, the renderer its depth,
// steps and string sizes).
#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <string>

#include "core/error.h"
#include "tokenizer/chat_template.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const nlohmann::json messages = nlohmann::json::parse(
      R"([{"role": "system", "content": "s"}, {"role": "user", "content": "hi </think> x"},
          {"role": "assistant", "content": "yo"}])");
  try {
    deepmoe::ChatTemplate t(std::string(reinterpret_cast<const char*>(data), size));
    (void)t.render(messages, true, "<s>", "</s>");
  } catch (const deepmoe::Error&) {
  }
  return 0;
}
