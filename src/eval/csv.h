// CSV as MMLU's files are written (RFC 4180): fields separated by commas, a field in double quotes
// may hold commas, newlines and doubled quotes; rows end with LF or CRLF.
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace deepmoe::eval {

// Rows of fields. `source` names the text in errors. Throws Error on a quote left open or text
// after a closing quote.
std::vector<std::vector<std::string>> parse_csv(std::string_view text, const std::string& source);

}  // namespace deepmoe::eval
