// The tokenizer inside a .gguf (tokenizer.ggml.*) rebuilt as tokenizer.json and
// tokenizer_config.json: any file gives a tokenizer that encodes and decodes, or throws Error.
#include <cstddef>
#include <cstdint>

#include "core/error.h"
#include "io/gguf.h"
#include "tokenizer/gguf_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const deepmoe::GgufFile file = deepmoe::parse_gguf({data, size}, "fuzz.gguf");
    const auto tokenizer = deepmoe::tokenizer_from_gguf(file);
    const auto ids = tokenizer->encode("Hello, world! 12345 \xE4\xBD\xA0\xE5\xA5\xBD <|end|>\n\n  x", true);
    (void)tokenizer->decode(ids);
  } catch (const deepmoe::Error&) {
  }
  return 0;
}
