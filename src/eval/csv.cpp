#include "eval/csv.h"

#include "core/error.h"

namespace deepmoe::eval {

std::vector<std::vector<std::string>> parse_csv(std::string_view text, const std::string& source) {
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> row;
  std::string field;
  size_t i = 0, line = 1;
  const auto end_field = [&] {
    row.push_back(std::move(field));
    field.clear();
  };
  const auto end_row = [&] {
    end_field();
    rows.push_back(std::move(row));
    row.clear();
  };
  while (i < text.size()) {
    const char c = text[i];
    if (c == '"' && field.empty()) {  // a quoted field, to its closing quote
      const size_t opened = line;
      ++i;
      for (;; ++i) {
        if (i >= text.size()) fail("{}:{}: a quoted field is never closed", source, opened);
        if (text[i] == '\n') ++line;
        if (text[i] != '"') {
          field += text[i];
        } else if (i + 1 < text.size() && text[i + 1] == '"') {
          field += '"';
          ++i;
        } else {
          break;
        }
      }
      ++i;  // past the closing quote: a separator, a line end or the end must follow
      if (i < text.size() && text[i] != ',' && text[i] != '\n' && text[i] != '\r')
        fail("{}:{}: text after a closing quote", source, line);
      continue;
    }
    if (c == ',') {
      end_field();
    } else if (c == '\n' || (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n')) {
      if (c == '\r') ++i;
      end_row();
      ++line;
    } else {
      field += c;
    }
    ++i;
  }
  if (!field.empty() || !row.empty()) end_row();
  return rows;
}

}  // namespace deepmoe::eval
