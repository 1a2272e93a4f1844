// Encoding arbitrary bytes with a DeepSeek-style tokenizer (its pre-tokenizer regexes, added
// tokens, merges): never crashes, and valid UTF-8 comes back unchanged from decode(encode(x)).
#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "tokenizer/bpe_trainer.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace {

const deepmoe::Tokenizer& tokenizer() {
  static const auto instance = [] {
    nlohmann::json vocab = nlohmann::json::object();
    for (int b = 0; b < 256; ++b) vocab[deepmoe::byte_level::char_for_byte(uint8_t(b))] = b;
    const char* merges[][2] = {{"Ġ", "t"}, {"h", "e"}, {"Ġt", "he"}, {"i", "n"}, {"1", "2"}, {"Ċ", "Ċ"}, {"Ġ", "Ġ"}};
    nlohmann::json merge_list = nlohmann::json::array();
    for (const auto& m : merges) {
      vocab[std::string(m[0]) + m[1]] = int(vocab.size());
      merge_list.push_back(std::string(m[0]) + " " + m[1]);
    }
    nlohmann::json added = nlohmann::json::array();
    const char* specials[] = {"<|end|>", "<｜User｜>", "<|e"};
    for (const char* s : specials)
      added.push_back({{"id", int(vocab.size()) + int(added.size())}, {"content", s}, {"special", true}});
    const nlohmann::json spec = {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merge_list}}},
                                 {"pre_tokenizer", nlohmann::json::parse(deepmoe::deepseek_v3_pre_tokenizer_json())},
                                 {"decoder", {{"type", "ByteLevel"}}},
                                 {"added_tokens", added}};
    return deepmoe::Tokenizer::from_json(spec.dump(), "", "fuzz tokenizer");
  }();
  return *instance;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto ids = tokenizer().encode(text);
  const std::string back = tokenizer().decode(ids);
  if (back != deepmoe::utf8::sanitize(text)) std::abort();  // round trip (after UTF-8 repair)
  deepmoe::StreamingDecoder stream(tokenizer());
  std::string streamed;
  for (const int32_t id : ids) streamed += stream.push(id);
  streamed += stream.finish();
  if (streamed != back) std::abort();  // streaming shows the same text
  return 0;
}
