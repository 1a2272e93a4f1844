// Multiple-choice tasks scored by log-likelihood, as lm-evaluation-harness scores them: each
// choice is a continuation of the question's context; `acc` counts the questions whose gold choice
// has the highest log-likelihood, `acc_norm` the same with each log-likelihood divided by the
// choice's length in characters (Python's len, as lm-eval's). The continuation is the task's
// target delimiter then the choice; contexts and continuations are tokenized as lm-eval does
// (trailing spaces of the context move to the continuation; the continuation's tokens are those
// of context + continuation past the context's).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "eval/loglikelihood.h"
#include "tokenizer/tokenizer.h"

namespace deepmoe::eval {

struct Question {
  std::string context;
  std::vector<std::string> choices;
  int64_t gold = 0;
  // Between the context and each choice, not counted in acc_norm's length: lm-eval's
  // target_delimiter (" " for mmlu and hellaswag; the generic JSONL's choices carry their own).
  std::string delimiter;
};

// The generic JSONL: one {"context": str, "choices": [str, ...], "gold": index} per line. Throws
// Error naming the file and line for anything else (a missing field, a gold outside the choices,
// fewer than two choices).
std::vector<Question> load_multiple_choice_jsonl(const std::string& path);

// lm-eval's _encode_pair: the context's tokens and each choice's continuation tokens.
struct EncodedQuestion {
  std::vector<int32_t> context;
  std::vector<std::vector<int32_t>> continuations;
};
EncodedQuestion encode_question(const Tokenizer& tokenizer, const Question& q);

struct QuestionResult {
  std::vector<ContinuationScore> scores;
  int64_t predicted = 0, predicted_norm = 0;  // argmax of logprob, of logprob / bytes
  bool correct = false, correct_norm = false;
};
QuestionResult judge(const Question& q, std::vector<ContinuationScore> scores);

// A metric over questions: the mean and its standard error (lm-eval's: the sample standard
// deviation over sqrt(n)).
struct Metric {
  double value = 0, stderr_ = 0;
};
Metric mean_of(const std::vector<double>& values);

}  // namespace deepmoe::eval
