#include "tokenizer/unicode_classes.h"

#include <string>
#include <utility>
#include <vector>

#include "tokenizer/regex.h"
#include "tokenizer/utf8.h"

namespace deepmoe::unicode {

bool is_white_space(char32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

bool is_word(char32_t cp) {
  if (cp < 0x80) return (cp >= '0' && cp <= '9') || (cp >= 'A' && cp <= 'Z') || (cp >= 'a' && cp <= 'z') || cp == '_';
  static const Regex word(R"(^[\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}])");
  std::string encoded;
  utf8::append(encoded, cp);
  std::vector<std::pair<size_t, size_t>> matches;
  word.find_all(encoded, matches);
  return !matches.empty();
}

}  // namespace deepmoe::unicode
