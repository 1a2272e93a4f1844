// Normalizer and pre-tokenizer of an HF tokenizer.json, for the components byte-level BPE
// tokenizers use. Anything else is rejected at load with an error naming the component.
#pragma once
#include <nlohmann/json_fwd.hpp>

#include <memory>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "tokenizer/regex.h"

namespace deepmoe {

// How a Split step treats the delimiters it finds (HF's SplitDelimiterBehavior).
enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

class Normalizer {
 public:
  // `spec` is tokenizer.json's "normalizer" (null: identity).
  explicit Normalizer(const nlohmann::json& spec);
  bool is_identity() const { return steps_.empty(); }
  std::string apply(std::string_view text) const;

 private:
  struct Replace {
    std::shared_ptr<const Regex> pattern;
    std::string content;
  };
  struct Prepend {
    std::string prefix;
  };
  void add(const nlohmann::json& spec);
  std::vector<std::variant<Replace, Prepend>> steps_;
};

// A piece of pre-tokenized text: bytes [begin, end) of the working buffer.
struct Piece {
  size_t begin, end;
};

class PreTokenizer {
 public:
  // `spec` is tokenizer.json's "pre_tokenizer" (null: the whole text is one word).
  explicit PreTokenizer(const nlohmann::json& spec);

  // Splits `buffer` (valid UTF-8) into pieces. Steps that insert text (ByteLevel's prefix
  // space) append it to `buffer`, so pieces are offsets, not views.
  void split(std::string& buffer, std::vector<Piece>& pieces) const;

  // Whether a ByteLevel step maps bytes to symbols (required: only byte-level BPE is supported).
  bool has_byte_level() const { return has_byte_level_; }

 private:
  struct Split {
    std::shared_ptr<const Regex> pattern;
    SplitBehavior behavior;
    bool invert;
  };
  struct ByteLevel {
    bool add_prefix_space;
    std::shared_ptr<const Regex> pattern;  // GPT-2's word regex when use_regex, else null
  };
  using Step = std::variant<Split, ByteLevel>;
  void add(const nlohmann::json& spec);
  static void apply(const Split& step, const std::string& buffer, const std::vector<Piece>& in,
                    std::vector<Piece>& out);
  static void apply(const ByteLevel& step, std::string& buffer, const std::vector<Piece>& in, std::vector<Piece>& out);

  std::vector<Step> steps_;
  bool has_byte_level_ = false;
};

// GPT-2's pre-tokenizer regex, which HF's ByteLevel uses when use_regex is true.
extern const char* const kGpt2Pattern;

}  // namespace deepmoe
