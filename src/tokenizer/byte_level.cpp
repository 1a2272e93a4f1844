#include "tokenizer/byte_level.h"

#include <unordered_map>

#include "tokenizer/utf8.h"

namespace deepmoe::byte_level {
namespace {

// Bytes that are printable Latin-1 keep their own code point; the other 68 are numbered from
// U+0100 upward in byte order. This is the table GPT-2 defined and every byte-level BPE uses.
struct Tables {
  std::array<std::string, 256> byte_to_char;
  std::unordered_map<char32_t, unsigned char> char_to_byte;
  Tables() {
    char32_t next_extra = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const char32_t cp = printable ? char32_t(b) : next_extra++;
      utf8::append(byte_to_char[b], cp);
      char_to_byte[cp] = static_cast<unsigned char>(b);
    }
  }
};

const Tables& tables() {
  static const Tables instance;
  return instance;
}

}  // namespace

const std::string& char_for_byte(unsigned char byte) { return tables().byte_to_char[byte]; }

std::string encode(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (const char c : bytes) out += char_for_byte(static_cast<unsigned char>(c));
  return out;
}

bool decode(std::string_view symbols, std::string& out) {
  const auto& map = tables().char_to_byte;
  const size_t start = out.size();
  for (size_t pos = 0; pos < symbols.size();) {
    if (utf8::valid_sequence_length(symbols, pos) == 0) {
      out.resize(start);
      return false;
    }
    const auto it = map.find(utf8::next(symbols, pos));
    if (it == map.end()) {
      out.resize(start);
      return false;
    }
    out.push_back(static_cast<char>(it->second));
  }
  return true;
}

std::array<std::string, 256> alphabet() { return tables().byte_to_char; }

}  // namespace deepmoe::byte_level
