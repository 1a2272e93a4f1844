// A HuggingFace byte-level BPE tokenizer loaded from tokenizer.json (+ tokenizer_config.json):
// added/special tokens, normalizer, pre-tokenizer regexes, BPE, post-processor, ByteLevel decoder.
// Encoding reproduces HF tokenizers id for id; decode(encode(x)) == x for valid UTF-8.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/added_tokens.h"
#include "tokenizer/bpe.h"
#include "tokenizer/pre_tokenizer.h"

namespace deepmoe {

class Tokenizer {
 public:
  // `path`: a model directory (tokenizer.json and, if present, tokenizer_config.json) or a
  // tokenizer.json file (tokenizer_config.json is looked for beside it). Throws Error naming
  // the file and what is wrong or unsupported.
  static std::unique_ptr<Tokenizer> load(const std::string& path);
  // From the two documents' text (`config_json` may be empty). `source` names them in errors.
  static std::unique_ptr<Tokenizer> from_json(std::string_view tokenizer_json, std::string_view config_json,
                                              const std::string& source);

  // Ids of `text`. Special-token strings inside the text become their tokens (HF's default).
  // With add_special_tokens, the post-processor's tokens (e.g. BOS) are added as HF does.
  // Invalid UTF-8 is first repaired as from_utf8_lossy would (U+FFFD per maximal subpart).
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = false) const;

  // Text of `ids`; throws Error for an id outside the vocabulary.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;
  // The raw bytes one token stands for (may be part of a multi-byte character).
  std::string token_bytes(int32_t id) const;
  // Whether `id` stands for some text (token_bytes and decode accept it). A vocabulary may have
  // holes, and a model's vocab_size may exceed the tokenizer's ids (DeepSeek pads it).
  bool spells(int32_t id) const;

  // Id of a token string (added token or vocabulary entry); nullopt when absent.
  std::optional<int32_t> token_to_id(std::string_view token) const;
  bool is_special(int32_t id) const;
  // One past the largest id (model vocabulary and added tokens together).
  int32_t id_limit() const { return id_limit_; }

  std::optional<int32_t> bos_id() const { return bos_id_; }
  std::optional<int32_t> eos_id() const { return eos_id_; }
  const std::string& bos_token() const { return bos_token_; }
  const std::string& eos_token() const { return eos_token_; }
  // tokenizer_config.json's chat_template (empty when there is none).
  const std::string& chat_template() const { return chat_template_; }

 private:
  Tokenizer() = default;
  void encode_plain(std::string_view text, std::vector<int32_t>& out) const;
  void encode_pre_tokenized(std::string text, std::vector<int32_t>& out) const;

  std::unique_ptr<BpeModel> model_;
  std::unique_ptr<Normalizer> normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  AddedTokenMatcher raw_matcher_, normalized_matcher_;
  std::unordered_map<int32_t, AddedToken> added_by_id_;
  std::unordered_map<std::string, int32_t> added_by_content_;
  int32_t id_limit_ = 0;

  // What add_special_tokens puts before and after the text.
  std::vector<int32_t> prefix_ids_, suffix_ids_;
  std::optional<int32_t> bos_id_, eos_id_;
  std::string bos_token_, eos_token_, chat_template_;
};

// Turns ids into text one at a time without ever emitting part of a character: bytes of a
// character split across tokens are held until it is whole. Invalid bytes become U+FFFD.
class StreamingDecoder {
 public:
  explicit StreamingDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = false)
      : tokenizer_(tokenizer), skip_special_(skip_special_tokens) {}
  // The text that became complete with this token (possibly empty).
  std::string push(int32_t id);
  // Whatever is still held (an unfinished character comes out as U+FFFD).
  std::string finish();

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_;
  std::string pending_;
};

// Ids of [0, vocab_size) the tokenizer cannot spell (a vocab_size padded past its ids, holes in
// its vocabulary): what a server never samples.
std::vector<int32_t> unspellable_ids(const Tokenizer& tokenizer, int64_t vocab_size);

}  // namespace deepmoe
