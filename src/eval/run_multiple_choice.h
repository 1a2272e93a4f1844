// A multiple-choice task scored by log-likelihood on a backend: acc and acc_norm (lm-eval's
// metrics, multiple_choice.h), a sample record per question.
#pragma once
#include <string>
#include <vector>

#include "eval/backend.h"
#include "eval/task_result.h"
#include "tokenizer/tokenizer.h"

namespace deepmoe::eval {

// Every question tokenized as lm-eval does; `questions` and the result in the same order.
std::vector<EncodedQuestion> encode_questions(const Tokenizer& tokenizer, const std::vector<Question>& questions);

TaskResult run_multiple_choice(Backend& backend, const std::string& name, const std::vector<Question>& questions,
                               const std::vector<EncodedQuestion>& encoded, TaskIo& io);

}  // namespace deepmoe::eval
