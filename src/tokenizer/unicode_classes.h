// The two Unicode character classes the tokenizer tests outside of regexes.
#pragma once

namespace deepmoe::unicode {

// The White_Space property (what Rust's char::is_whitespace and regex \s accept).
bool is_white_space(char32_t cp);

// Rust regex's \w: Alphabetic, Mark, Decimal_Number, Connector_Punctuation, Join_Control.
bool is_word(char32_t cp);

}  // namespace deepmoe::unicode
