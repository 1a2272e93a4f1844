#include "eval/run_multiple_choice.h"

#include <algorithm>

namespace deepmoe::eval {

std::vector<EncodedQuestion> encode_questions(const Tokenizer& tokenizer, const std::vector<Question>& questions) {
  std::vector<EncodedQuestion> encoded;
  for (const Question& q : questions) encoded.push_back(encode_question(tokenizer, q));
  return encoded;
}

TaskResult run_multiple_choice(Backend& backend, const std::string& name, const std::vector<Question>& questions,
                               const std::vector<EncodedQuestion>& encoded, TaskIo& io) {
  std::vector<double> acc, acc_norm;
  // In slices, for the progress line; each slice is one batch for the backend.
  constexpr size_t kSlice = 64;
  for (size_t begin = 0; begin < questions.size(); begin += kSlice) {
    const size_t end = std::min(questions.size(), begin + kSlice);
    const auto scores = backend.loglikelihood(std::span(encoded).subspan(begin, end - begin));
    for (size_t i = begin; i < end; ++i) {
      const Question& q = questions[i];
      const QuestionResult r = judge(q, scores[i - begin]);
      acc.push_back(r.correct ? 1.0 : 0.0);
      acc_norm.push_back(r.correct_norm ? 1.0 : 0.0);
      if (io.log_sample) {
        nlohmann::json line = {{"task", name},
                               {"doc_id", i},
                               {"context", q.context},
                               {"choices", q.choices},
                               {"gold", q.gold},
                               {"context_tokens", encoded[i].context},
                               {"continuation_tokens", encoded[i].continuations},
                               {"pred", r.predicted},
                               {"pred_norm", r.predicted_norm},
                               {"acc", r.correct ? 1 : 0},
                               {"acc_norm", r.correct_norm ? 1 : 0}};
        for (const auto& s : r.scores) {
          line["logprobs"].push_back(s.logprob);
          line["greedy"].push_back(s.greedy);
        }
        io.log_sample(line);
      }
    }
    if (io.progress) io.progress->advance(int64_t(end - begin));
  }
  return {name, {{"acc,none", std::move(acc)}, {"acc_norm,none", std::move(acc_norm)}}};
}

}  // namespace deepmoe::eval
