// HumanEval (Chen et al. 2021, "Evaluating Large Language Models Trained on Code"): the model
// completes a function from its signature and docstring, and the completion passes when the task's
// tests run without error. Programs are assembled as OpenAI's human-eval does, generation stops as
// lm-evaluation-harness's `humaneval` task stops it, and pass@k is the paper's unbiased estimator.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace deepmoe::eval {

struct CodeTask {
  std::string task_id, prompt, canonical_solution, test, entry_point;
};

// HumanEval's JSONL (HumanEval.jsonl, as openai/human-eval ships it): one object per line with the
// string fields above; blank lines are skipped. Throws Error naming file:line and the field that
// is missing or not a string, or the file when it holds no task.
std::vector<CodeTask> load_humaneval_jsonl(const std::string& path);

// The program that judges a completion: prompt + completion + "\n" + test + "\n" +
// "check(entry_point)", character for character what human-eval's execution.py executes.
std::string humaneval_program(const CodeTask& task, const std::string& completion);

// The probability that at least one of k samples drawn from n, of which c passed, passes:
// 1 - C(n-c, k) / C(n, k), as a product that neither overflows nor cancels. Throws Error unless
// 0 <= c <= n and 1 <= k <= n.
double pass_at_k(int64_t n, int64_t c, int64_t k);

// lm-eval's humaneval.yaml generation: greedy (do_sample false), at most this many new tokens, and
// cut at the first of these stop sequences (the start of whatever follows the function).
inline constexpr int64_t kHumanEvalMaxGenTokens = 1024;
std::vector<std::string> humaneval_stop_sequences();

}  // namespace deepmoe::eval
