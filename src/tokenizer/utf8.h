// UTF-8 helpers for the tokenizer: validation with replacement, code point iteration, and the
// "how much of this byte string is whole characters" question streaming detokenization asks.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace deepmoe::utf8 {

constexpr char32_t kReplacement = 0xFFFD;

// Appends the UTF-8 encoding of `cp` (which must be a Unicode scalar value) to `out`.
void append(std::string& out, char32_t cp);

// Decodes the code point at text[pos] and advances pos. The text must be valid UTF-8.
char32_t next(std::string_view text, size_t& pos);

// Length in bytes of the valid sequence that starts at text[pos], or 0 when it is invalid or cut off.
size_t valid_sequence_length(std::string_view text, size_t pos);

// Whether the bytes from pos to the end are the beginning of a valid sequence that more bytes
// could complete (e.g. the first two bytes of a three-byte character).
bool is_incomplete_sequence(std::string_view text, size_t pos);

// Returns `text` with every ill-formed subsequence replaced by U+FFFD, one per maximal subpart
// (the WHATWG / Unicode "best practice" that Rust's from_utf8_lossy, Python and Node follow).
std::string sanitize(std::string_view text);

bool is_valid(std::string_view text);

}  // namespace deepmoe::utf8
