#include "eval/hellaswag.h"

#include <fstream>

#include "core/error.h"

namespace deepmoe::eval {

std::vector<Question> load_hellaswag(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open", path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(std::move(line));
  }
  while (!lines.empty() && lines.back().empty()) lines.pop_back();  // a file's trailing blank lines
  if (lines.empty()) fail("{}: no tasks (llama-perplexity's HellaSwag text: six lines per task)", path);

  std::vector<Question> tasks;
  for (size_t first = 0; first + 6 <= lines.size(); first += 6) {
    // Checked task by task: a line lost mid-file shows up at the first gold line it shifts.
    const std::string& gold = lines[first + 1];
    if (gold.size() != 1 || gold[0] < '0' || gold[0] > '3')
      fail(
          "{}:{}: the gold ending's index must be 0, 1, 2 or 3, found '{}' (six lines per task: the context, "
          "the index, four endings)",
          path, first + 2, gold);
    tasks.push_back({lines[first],
                     {lines.begin() + ptrdiff_t(first) + 2, lines.begin() + ptrdiff_t(first) + 6},
                     gold[0] - '0',
                     std::string(1, ' ')});
  }
  if (lines.size() % 6 != 0)
    fail(
        "{}:{}: the file ends mid-task ({} lines is not a multiple of six: the context, the gold ending's "
        "index, four endings)",
        path, lines.size(), lines.size());
  return tasks;
}

}  // namespace deepmoe::eval
