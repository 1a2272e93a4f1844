// The tokenizer a GGUF file carries (tokenizer.ggml.*: tokens, token types, merges, the named
// pre-tokenizer, special ids, chat template), rebuilt as the tokenizer.json it came from.
#pragma once
#include <memory>
#include <string>

#include "io/gguf.h"
#include "tokenizer/tokenizer.h"

namespace deepmoe {

// tokenizer.json and tokenizer_config.json as text.
struct GgufTokenizerFiles {
  std::string tokenizer_json, tokenizer_config_json;
};

// Throws Error naming the file when it has no tokenizer or one we cannot rebuild (only
// llama.cpp's "gpt2" byte-level BPE with the deepseek-v3, llama-bpe or gpt-2 pre-tokenizers).
GgufTokenizerFiles tokenizer_files_from_gguf(const GgufFile& file);
std::unique_ptr<Tokenizer> tokenizer_from_gguf(const GgufFile& file);

}  // namespace deepmoe
