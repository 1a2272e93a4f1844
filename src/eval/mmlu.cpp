#include "eval/mmlu.h"

#include <algorithm>
#include <filesystem>
#include <map>

#include "core/error.h"
#include "eval/csv.h"
#include "io/mapped_file.h"

namespace deepmoe::eval {

namespace {

namespace fs = std::filesystem;

struct Row {
  std::string question;
  std::string choices[4];
  int answer = 0;
};

std::vector<Row> read_rows(const fs::path& path) {
  const std::string text = read_text_file(path.string());
  std::vector<Row> rows;
  size_t number = 0;
  for (auto& fields : parse_csv(text, path.string())) {
    ++number;
    if (fields.size() == 1 && fields[0].empty()) continue;
    if (fields.size() != 6 || fields[5].size() != 1 || fields[5][0] < 'A' || fields[5][0] > 'D')
      fail("{}: row {}: expected question,A,B,C,D,answer with an answer of A to D ({} fields)", path.string(), number,
           fields.size());
    Row r;
    r.question = fields[0];
    for (int i = 0; i < 4; ++i) r.choices[i] = fields[size_t(1 + i)];
    r.answer = fields[5][0] - 'A';
    rows.push_back(std::move(r));
  }
  return rows;
}

// lm-eval's doc_to_text: the question stripped of surrounding whitespace, the lettered choices, "Answer:".
std::string pose(const Row& r) {
  const size_t first = r.question.find_first_not_of(" \t\n\r");
  const size_t last = r.question.find_last_not_of(" \t\n\r");
  std::string text = first == std::string::npos ? "" : r.question.substr(first, last - first + 1);
  for (int i = 0; i < 4; ++i) text += fmt::format("\n{}. {}", char('A' + i), r.choices[i]);
  return text + "\nAnswer:";
}

}  // namespace

std::vector<Subject> load_mmlu(const std::string& dir, const std::string& split, int num_fewshot) {
  if (!fs::is_directory(dir)) fail("{}: not a directory (MMLU's CSV files: {{subject}}_{}.csv)", dir, split);
  if (num_fewshot < 0) fail("--num-fewshot must be >= 0, found {}", num_fewshot);
  std::map<std::string, fs::path> tests, devs;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    for (auto [suffix, found] : {std::pair{"_" + split + ".csv", &tests}, std::pair{std::string("_dev.csv"), &devs}})
      if (entry.is_regular_file() && name.size() > suffix.size() && name.ends_with(suffix))
        (*found)[name.substr(0, name.size() - suffix.size())] = entry.path();
  }
  if (tests.empty()) fail("{}: no {{subject}}_{}.csv file", dir, split);
  std::vector<Subject> subjects;
  for (const auto& [name, path] : tests) {
    std::string prompt = "The following are multiple choice questions (with answers) about ";
    std::string spaced = name;
    std::replace(spaced.begin(), spaced.end(), '_', ' ');
    prompt += spaced + ".\n\n";
    if (num_fewshot > 0) {
      const auto dev = devs.find(name);
      const std::vector<Row> examples = dev == devs.end() ? std::vector<Row>() : read_rows(dev->second);
      if (int(examples.size()) < num_fewshot)
        fail("{}: --num-fewshot {} needs {}_dev.csv with as many questions, found {}", dir, num_fewshot, name,
             examples.size());
      for (int i = 0; i < num_fewshot; ++i)
        prompt += pose(examples[size_t(i)]) + " " + char('A' + examples[size_t(i)].answer) + "\n\n";
    }
    Subject s;
    s.name = name;
    for (const Row& r : read_rows(path)) s.questions.push_back({prompt + pose(r), {"A", "B", "C", "D"}, r.answer, " "});
    if (s.questions.empty()) fail("{}: no questions", path.string());
    subjects.push_back(std::move(s));
  }
  return subjects;
}

}  // namespace deepmoe::eval
