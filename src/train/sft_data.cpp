#include "train/sft_data.h"

#include <algorithm>
#include <numeric>
#include <random>

#include "core/error.h"
#include "io/jsonl.h"

namespace deepmoe::train {

namespace {

void append(SftExample& e, const std::vector<int32_t>& tokens, bool trained) {
  e.tokens.insert(e.tokens.end(), tokens.begin(), tokens.end());
  e.trained.insert(e.trained.end(), tokens.size(), trained ? 1 : 0);
}

}  // namespace

SftExample encode_conversation(const Tokenizer& tokenizer, const ChatTemplate& chat_template,
                               const nlohmann::json& messages, bool last_turn_only) {
  if (!messages.is_array() || messages.empty()) fail("'messages' must be a non-empty list of messages");
  const std::string &bos = tokenizer.bos_token(), &eos = tokenizer.eos_token();
  const std::string whole = chat_template.render(messages, false, bos, eos);
  // Each assistant turn: the text between the conversation before it with the generation prompt
  // and the conversation through it.
  std::vector<std::pair<size_t, size_t>> turns;
  for (size_t i = 0; i < messages.size(); ++i) {
    if (!messages[i].is_object() || messages[i].value("role", "") != "assistant") continue;
    const nlohmann::json before(messages.begin(), messages.begin() + ptrdiff_t(i));
    const nlohmann::json through(messages.begin(), messages.begin() + ptrdiff_t(i) + 1);
    const std::string prompt = chat_template.render(before, true, bos, eos);
    const std::string done = chat_template.render(through, false, bos, eos);
    if (!done.starts_with(prompt) || !whole.starts_with(done) ||
        (!turns.empty() && prompt.size() < turns.back().second))
      fail(
          "the chat template does not render the conversation up to assistant turn {} as a prefix of the whole, so "
          "it cannot mark the assistant's tokens (give {{\"prompt\", \"completion\"}} lines instead)",
          i);
    turns.emplace_back(prompt.size(), done.size());
  }
  if (turns.empty()) fail("the conversation has no assistant turn to train on");
  // Piece by piece, each piece trained or not; the pieces must tokenize as the whole does.
  SftExample e;
  size_t at = 0;
  for (size_t t = 0; t < turns.size(); ++t) {
    const auto [begin, end] = turns[t];
    append(e, tokenizer.encode(std::string_view(whole).substr(at, begin - at)), false);
    append(e, tokenizer.encode(std::string_view(whole).substr(begin, end - begin)),
           !last_turn_only || t + 1 == turns.size());
    at = end;
  }
  append(e, tokenizer.encode(std::string_view(whole).substr(at)), false);
  if (e.tokens != tokenizer.encode(whole))
    fail("an assistant turn does not start or end on a token boundary of the rendered conversation");
  if (!e.trained.empty()) e.trained[0] = 0;  // nothing predicts the first token
  return e;
}

SftExample encode_completion(const Tokenizer& tokenizer, const std::string& prompt, const std::string& completion) {
  SftExample e;
  append(e, tokenizer.encode(prompt, true), false);
  std::vector<int32_t> answer = tokenizer.encode(completion);
  if (tokenizer.eos_id()) answer.push_back(*tokenizer.eos_id());
  append(e, answer, true);
  if (!e.trained.empty()) e.trained[0] = 0;
  return e;
}

std::vector<SftExample> load_sft_jsonl(const std::string& path, const Tokenizer& tokenizer,
                                       const ChatTemplate* chat_template) {
  std::vector<SftExample> examples;
  for_each_jsonl_object(path, [&](const nlohmann::json& j, const std::string& where) {
    try {
      if (j.contains("messages")) {
        if (!chat_template)
          fail(
              "'messages' needs the model's chat template (tokenizer_config.json has none); give "
              "{{\"prompt\", \"completion\"}} lines");
        examples.push_back(encode_conversation(tokenizer, *chat_template, j["messages"]));
      } else {
        const std::string completion = string_field(j, "completion", where, true);
        examples.push_back(encode_completion(tokenizer, string_field(j, "prompt", where), completion));
      }
    } catch (const Error& e) {
      const std::string what = e.what();
      if (what.starts_with(where)) throw;
      fail("{}: {}", where, what);
    }
  });
  if (examples.empty())
    fail("{}: no examples (one {{\"messages\": [...]}} or {{\"prompt\", \"completion\"}} per line)", path);
  return examples;
}

SftData::SftData(std::vector<SftExample> train, std::vector<SftExample> validation, int64_t seq, int64_t batch,
                 int32_t pad, uint64_t seed)
    : train_(std::move(train)),
      validation_(std::move(validation)),
      seq_(seq),
      batch_(batch),
      pad_(pad),
      order_(train_.size(), seed) {
  stats_.examples = int64_t(train_.size());
  for (const SftExample& e : train_) {
    const int64_t kept = std::min<int64_t>(int64_t(e.tokens.size()), seq_ + 1);
    stats_.cut += int64_t(e.tokens.size()) > seq_ + 1 ? 1 : 0;
    stats_.tokens += kept - 1;
    stats_.trained += std::accumulate(e.trained.begin() + 1, e.trained.begin() + kept, int64_t(0));
  }
  if (stats_.trained == 0) fail("no example has a token to train on within --seq {}", seq_);
  stats_.padding = 1.0 - double(stats_.tokens) / double(stats_.examples * seq_);
  for (const SftExample& e : validation_) {
    const int64_t kept = std::min<int64_t>(int64_t(e.tokens.size()), seq_ + 1);
    validation_trained_ += double(std::accumulate(e.trained.begin() + 1, e.trained.begin() + kept, int64_t(0)));
  }
}

size_t EpochOrder::operator()(int64_t k) {
  const int64_t epoch = k / int64_t(n_);
  if (epoch != epoch_) {
    order_.resize(n_);
    std::iota(order_.begin(), order_.end(), size_t(0));
    std::mt19937_64 rng(seed_ * 1000003 + uint64_t(epoch));
    std::shuffle(order_.begin(), order_.end(), rng);
    epoch_ = epoch;
  }
  return order_[size_t(k % int64_t(n_))];
}

const SftExample& SftData::example(int64_t k) { return train_[order_(k)]; }

void lay_out_row(const SftExample& example, int64_t seq, int32_t pad, int32_t* inputs, int32_t* targets,
                 double* weights) {
  const int64_t n = std::min<int64_t>(int64_t(example.tokens.size()) - 1, seq);
  std::fill(inputs, inputs + seq, pad);
  std::fill(targets, targets + seq, pad);
  std::fill(weights, weights + seq, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    inputs[i] = example.tokens[size_t(i)];
    targets[i] = example.tokens[size_t(i + 1)];
    weights[i] = example.trained[size_t(i + 1)];
  }
}

MicroBatch SftData::rows_of(const std::vector<const SftExample*>& examples, std::vector<double>& weights) const {
  MicroBatch m;
  m.rows = int64_t(examples.size());
  m.inputs.assign(size_t(m.rows * seq_), pad_);
  m.targets.assign(size_t(m.rows * seq_), pad_);
  weights.assign(size_t(m.rows * seq_), 0.0);
  for (int64_t r = 0; r < m.rows; ++r)
    lay_out_row(*examples[size_t(r)], seq_, pad_, &m.inputs[size_t(r * seq_)], &m.targets[size_t(r * seq_)],
                &weights[size_t(r * seq_)]);
  for (const double w : weights) m.trained_tokens += int64_t(w);
  return m;
}

// The masked mean: -Σ w log p / total, total the trained tokens of the whole step (or of the whole
// validation set), so the micro-batches' losses add up to the step's.
static TokenObjective masked_mean(std::vector<double> weights, double total) {
  return [weights = std::move(weights), total](std::span<const double> logprobs, std::span<double> gradient) {
    double loss = 0;
    for (size_t r = 0; r < logprobs.size(); ++r) {
      loss -= weights[r] * logprobs[r] / total;
      gradient[r] = -weights[r] / total;
    }
    return loss;
  };
}

MicroBatch SftData::train_batch(int64_t first, int64_t count, int64_t step_examples) {
  // The step's trained tokens, counted over all its examples (every rank finds the same).
  const int64_t step_first = first - first % step_examples;
  double total = 0;
  for (int64_t k = step_first; k < step_first + step_examples; ++k) {
    const SftExample& e = example(k);
    const int64_t kept = std::min<int64_t>(int64_t(e.tokens.size()), seq_ + 1);
    total += double(std::accumulate(e.trained.begin() + 1, e.trained.begin() + kept, int64_t(0)));
  }
  std::vector<const SftExample*> examples;
  for (int64_t k = first; k < first + count; ++k) examples.push_back(&example(k));
  std::vector<double> weights;
  MicroBatch m = rows_of(examples, weights);
  m.weight = 1.0;
  m.share = double(count) / double(step_examples);
  m.objective = masked_mean(std::move(weights), std::max(total, 1.0));
  return m;
}

int64_t SftData::validation_batches() const { return (int64_t(validation_.size()) + batch_ - 1) / batch_; }

MicroBatch SftData::validation_batch(int64_t index) {
  std::vector<const SftExample*> examples;
  for (int64_t k = index * batch_; k < std::min<int64_t>((index + 1) * batch_, int64_t(validation_.size())); ++k)
    examples.push_back(&validation_[size_t(k)]);
  std::vector<double> weights;
  MicroBatch m = rows_of(examples, weights);
  m.weight = 1.0;
  m.objective = masked_mean(std::move(weights), std::max(validation_trained_, 1.0));
  return m;
}

}  // namespace deepmoe::train
