#include "eval/multiple_choice.h"

#include <nlohmann/json.hpp>

#include <cmath>

#include "core/error.h"
#include "io/jsonl.h"

namespace deepmoe::eval {

std::vector<Question> load_multiple_choice_jsonl(const std::string& path) {
  std::vector<Question> questions;
  for_each_jsonl_object(path, [&](const nlohmann::json& j, const std::string& where) {
    Question q;
    q.context = string_field(j, "context", where);
    if (!j.contains("choices") || !j["choices"].is_array() || j["choices"].size() < 2)
      fail("{}: 'choices' must be a list of at least two strings", where);
    for (const auto& c : j["choices"]) {
      if (!c.is_string() || c.get<std::string>().empty()) fail("{}: every choice must be a non-empty string", where);
      q.choices.push_back(c.get<std::string>());
    }
    if (!j.contains("gold") || !j["gold"].is_number_integer() || j["gold"].get<int64_t>() < 0 ||
        j["gold"].get<int64_t>() >= int64_t(q.choices.size()))
      fail("{}: 'gold' must be the index of a choice (0 to {})", where, q.choices.size() - 1);
    q.gold = j["gold"].get<int64_t>();
    questions.push_back(std::move(q));
  });
  if (questions.empty()) fail("{}: no questions", path);
  return questions;
}

EncodedQuestion encode_question(const Tokenizer& tokenizer, const Question& q) {
  // lm-eval's _encode_pair: the context's trailing spaces go to the continuation, and the
  // continuation is what context + choice tokenizes to past the context's own tokens (no BOS: its
  // default). An empty context is the prefix token (BOS, else EOS) alone.
  const size_t kept = q.context.find_last_not_of(' ') == std::string::npos ? 0 : q.context.find_last_not_of(' ') + 1;
  const std::string context = q.context.substr(0, kept), spaces = q.context.substr(kept);
  EncodedQuestion e;
  if (context.empty()) {
    const auto prefix = tokenizer.bos_id() ? tokenizer.bos_id() : tokenizer.eos_id();
    if (!prefix) fail("an empty context needs the tokenizer's BOS or EOS token to start from");
    e.context = {*prefix};
  } else {
    e.context = tokenizer.encode(context);
  }
  for (const std::string& choice : q.choices) {
    std::vector<int32_t> continuation = tokenizer.encode(spaces + q.delimiter + choice);
    if (!context.empty()) {
      const std::vector<int32_t> whole = tokenizer.encode(context + spaces + q.delimiter + choice);
      continuation.assign(whole.begin() + ptrdiff_t(std::min(whole.size(), e.context.size())), whole.end());
    }
    if (continuation.empty()) fail("the choice '{}' adds no tokens to its context", choice);
    e.continuations.push_back(std::move(continuation));
  }
  return e;
}

namespace {

// UTF-8 code points: what Python's len counts.
size_t characters(const std::string& text) {
  size_t n = 0;
  for (const char c : text) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80 ? 1 : 0;
  return n;
}

}  // namespace

QuestionResult judge(const Question& q, std::vector<ContinuationScore> scores) {
  QuestionResult r;
  double best = -INFINITY, best_norm = -INFINITY;
  for (size_t i = 0; i < scores.size(); ++i) {
    const double norm = scores[i].logprob / double(characters(q.choices[i]));
    if (scores[i].logprob > best) {
      best = scores[i].logprob;
      r.predicted = int64_t(i);
    }
    if (norm > best_norm) {
      best_norm = norm;
      r.predicted_norm = int64_t(i);
    }
  }
  r.correct = r.predicted == q.gold;
  r.correct_norm = r.predicted_norm == q.gold;
  r.scores = std::move(scores);
  return r;
}

Metric mean_of(const std::vector<double>& values) {
  Metric m;
  const double n = double(values.size());
  if (values.empty()) return m;
  for (const double v : values) m.value += v / n;
  if (values.size() < 2) return m;
  double squares = 0;
  for (const double v : values) squares += (v - m.value) * (v - m.value);
  m.stderr_ = std::sqrt(squares / (n - 1) / n);
  return m;
}

}  // namespace deepmoe::eval
