// HumanEval on a backend: n completions per task (greedy, or sampled with seeds seed..seed+n-1),
// each run with the task's tests in the sandbox, pass@k per task by the unbiased estimator
// (lm-eval's metric "pass@k" under its "create_test" filter).
#pragma once
#include <vector>

#include "eval/backend.h"
#include "eval/humaneval.h"
#include "eval/sandbox.h"
#include "eval/task_result.h"

namespace deepmoe::eval {

struct CodeOptions {
  int64_t samples = 1;  // n
  SamplingParams sampling;
  std::vector<int64_t> k = {1};
  SandboxLimits limits;
  int64_t max_gen_toks = 0;  // 0: the task's own
  int workers = 0;           // programs run at once (0: the machine's cores)
};

TaskResult run_humaneval(Backend& backend, const std::vector<CodeTask>& tasks, const CodeOptions& options, TaskIo& io,
                         std::vector<Generation>& generations);

}  // namespace deepmoe::eval
