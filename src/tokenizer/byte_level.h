// GPT-2's byte-level alphabet: every byte maps to one printable Unicode character, so any byte
// string becomes a string of vocabulary symbols (a space becomes 'Ġ', a newline 'Ċ').
#pragma once
#include <array>
#include <string>
#include <string_view>

namespace deepmoe::byte_level {

// The character that stands for `byte`, as UTF-8.
const std::string& char_for_byte(unsigned char byte);

// The byte-level form of raw bytes (what BPE vocabularies are written in).
std::string encode(std::string_view bytes);

// Appends the raw bytes a byte-level string stands for to `out`; returns false (appending
// nothing) when some character of `symbols` is not in the alphabet.
bool decode(std::string_view symbols, std::string& out);

// The 256 characters of the alphabet, in byte order.
std::array<std::string, 256> alphabet();

}  // namespace deepmoe::byte_level
