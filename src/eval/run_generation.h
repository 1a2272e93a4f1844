// GSM8K on a backend as lm-evaluation-harness's gsm8k and gsm8k_cot run it: greedy generation
// until a stop sequence, then exact_match under the strict-match and flexible-extract filters.
#pragma once
#include <vector>

#include "eval/backend.h"
#include "eval/gsm8k.h"
#include "eval/task_result.h"

namespace deepmoe::eval {

// max_gen_toks 0: the task's own. `generations` receives each problem's generation (for speed).
TaskResult run_gsm8k(Backend& backend, Gsm8kVariant variant, const std::vector<Problem>& problems,
                     const std::vector<Problem>& fewshot, int64_t max_gen_toks, TaskIo& io,
                     std::vector<Generation>& generations);

}  // namespace deepmoe::eval
