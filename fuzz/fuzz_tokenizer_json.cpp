// tokenizer.json comes with downloaded models: any bytes must load into a working tokenizer or
// throw Error, and a loaded tokenizer must encode and decode without crashing.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const auto tokenizer = deepmoe::Tokenizer::from_json(text, "", "fuzz");
    const auto ids = tokenizer->encode("Hello, world! 12345 \xE4\xBD\xA0\xE5\xA5\xBD <|end|>\n\n  x", true);
    (void)tokenizer->decode(ids);
  } catch (const deepmoe::Error&) {
  }
  return 0;
}
