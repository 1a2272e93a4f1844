// Pre-tokenizer regexes through PCRE2 (UTF + UCP, JIT), with HuggingFace's semantics.
//
// HF tokenizers (Rust) runs these patterns through Oniguruma, whose Unicode \s is exactly the
// White_Space property, \w is Letter | Mark | Decimal_Number | Connector_Punctuation and \d is
// Decimal_Number. PCRE2's own classes differ at the edges (its \w lacks marks; JavaScript's \s
// also takes U+FEFF), so the pattern is rewritten to spell those classes out before compiling.
#pragma once
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace deepmoe {

class Regex {
 public:
  // Throws Error naming the pattern and PCRE2's message when it does not compile.
  explicit Regex(const std::string& pattern);
  ~Regex();
  Regex(Regex&&) noexcept;
  Regex& operator=(Regex&&) noexcept;

  // Appends the [begin, end) byte ranges of all non-overlapping matches in `text` (valid
  // UTF-8), left to right; an empty match advances by one character.
  void find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& matches) const;

  // The pattern as compiled for PCRE2 (after the class rewrites), for error messages and tests.
  const std::string& compiled_pattern() const { return compiled_pattern_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string compiled_pattern_;
};

// Rewrites \s \S \w \W \d \D into explicit Unicode classes with Oniguruma's meaning.
std::string rewrite_to_oniguruma_classes(const std::string& pattern);

}  // namespace deepmoe
