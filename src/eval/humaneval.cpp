#include "eval/humaneval.h"

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/jsonl.h"

namespace deepmoe::eval {

std::vector<CodeTask> load_humaneval_jsonl(const std::string& path) {
  std::vector<CodeTask> tasks;
  for_each_jsonl_object(path, [&](const nlohmann::json& j, const std::string& where) {
    CodeTask t{string_field(j, "task_id", where), string_field(j, "prompt", where),
               string_field(j, "canonical_solution", where), string_field(j, "test", where),
               // check() is called with it by name; an empty one would make every program a syntax error.
               string_field(j, "entry_point", where, true)};
    tasks.push_back(std::move(t));
  });
  if (tasks.empty()) fail("{}: no tasks", path);
  return tasks;
}

std::string humaneval_program(const CodeTask& task, const std::string& completion) {
  // No newline after check(...): execution.py has none (Python does not need one).
  return task.prompt + completion + "\n" + task.test + "\n" + "check(" + task.entry_point + ")";
}

double pass_at_k(int64_t n, int64_t c, int64_t k) {
  if (n < 1 || c < 0 || c > n || k < 1 || k > n)
    fail("pass@k needs 0 <= c <= n and 1 <= k <= n, found n={} c={} k={}", n, c, k);
  // Fewer failures than draws: every draw of k holds a pass.
  if (n - c < k) return 1.0;
  // C(n-c, k) / C(n, k) = prod over i in (n-c, n] of (1 - k/i) (the Codex paper's numpy form).
  double all_fail = 1.0;
  for (int64_t i = n - c + 1; i <= n; ++i) all_fail *= 1.0 - double(k) / double(i);
  return 1.0 - all_fail;
}

std::vector<std::string> humaneval_stop_sequences() {
  // lm-evaluation-harness, lm_eval/tasks/humaneval/humaneval.yaml (version 1.0), `until`.
  return {"\nclass", "\ndef", "\n#", "\nif", "\nprint"};
}

}  // namespace deepmoe::eval
