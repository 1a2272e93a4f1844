#include "train/dpo_data.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "core/error.h"
#include "io/jsonl.h"
#include "train/reference_model.h"

namespace deepmoe::train {

namespace {

// The conversation (or plain prompt) followed by one reply, only the reply trained.
SftExample encode_reply(const Tokenizer& tokenizer, const ChatTemplate* chat_template, const nlohmann::json& prompt,
                        const std::string& reply, const std::string& where) {
  if (prompt.is_string()) return encode_completion(tokenizer, prompt.get<std::string>(), reply);
  if (!prompt.is_array()) fail("{}: 'prompt' must be a string or a list of messages", where);
  if (!chat_template)
    fail("{}: a conversation needs the model's chat template (tokenizer_config.json has none)", where);
  nlohmann::json messages = prompt;
  messages.push_back({{"role", "assistant"}, {"content", reply}});
  return encode_conversation(tokenizer, *chat_template, messages, true);
}

double log_sigmoid(double z) { return z >= 0 ? -std::log1p(std::exp(-z)) : z - std::log1p(std::exp(z)); }
double sigmoid(double z) { return z >= 0 ? 1 / (1 + std::exp(-z)) : std::exp(z) / (1 + std::exp(z)); }

}  // namespace

RowScorer model_scorer(const std::string& model_dir, int threads, GemmPrecision precision, int64_t seq) {
  auto model = std::make_shared<ReferenceModel>(model_dir, threads, precision);
  return [model, seq](const MicroBatch& m, const std::vector<double>& weights) {
    const std::vector<double> logprobs = model->token_logprobs(m, seq);
    std::vector<double> sums(size_t(m.rows), 0.0);
    for (size_t i = 0; i < logprobs.size(); ++i) sums[i / size_t(seq)] += weights[i] * logprobs[i];
    return sums;
  };
}

std::vector<PreferencePair> load_preference_jsonl(const std::string& path, const Tokenizer& tokenizer,
                                                  const ChatTemplate* chat_template) {
  std::vector<PreferencePair> pairs;
  for_each_jsonl_object(path, [&](const nlohmann::json& j, const std::string& where) {
    const std::string chosen = string_field(j, "chosen", where, true);
    const std::string rejected = string_field(j, "rejected", where, true);
    if (chosen == rejected) fail("{}: 'chosen' and 'rejected' are the same reply; the pair teaches nothing", where);
    const char* key = j.contains("messages") ? "messages" : "prompt";
    if (!j.contains(key)) fail("{}: needs 'prompt' (text or messages) or 'messages'", where);
    try {
      pairs.push_back({encode_reply(tokenizer, chat_template, j[key], chosen, where),
                       encode_reply(tokenizer, chat_template, j[key], rejected, where)});
    } catch (const Error& e) {
      const std::string what = e.what();
      if (what.starts_with(where)) throw;
      fail("{}: {}", where, what);
    }
  });
  if (pairs.empty()) fail("{}: no pairs (one {{\"prompt\", \"chosen\", \"rejected\"}} per line)", path);
  return pairs;
}

DpoData::DpoData(std::vector<PreferencePair> train, std::vector<PreferencePair> validation, int64_t seq, int64_t batch,
                 int32_t pad, uint64_t seed, double beta)
    : train_(std::move(train)),
      validation_(std::move(validation)),
      seq_(seq),
      batch_(batch),
      pad_(pad),
      beta_(beta),
      order_(train_.size(), seed) {
  if (!(beta_ > 0) || !std::isfinite(beta_)) fail("--beta must be a positive number, found {}", beta_);
  for (const auto* set : {&train_, &validation_})
    for (const PreferencePair& p : *set)
      for (const SftExample* e : {&p.chosen, &p.rejected}) {
        const int64_t kept = std::min<int64_t>(int64_t(e->tokens.size()), seq_ + 1);
        if (std::accumulate(e->trained.begin() + 1, e->trained.begin() + kept, 0) == 0)
          fail("a reply has no token within --seq {} (its prompt is as long); raise --seq", seq_);
      }
}

MicroBatch DpoData::rows(const std::vector<size_t>& pairs, std::vector<double>& weights) const {
  MicroBatch m;
  m.rows = 2 * int64_t(pairs.size());
  m.inputs.resize(size_t(m.rows * seq_));
  m.targets.resize(m.inputs.size());
  weights.resize(m.inputs.size());
  for (size_t i = 0; i < pairs.size(); ++i) {
    const size_t p = pairs[i];
    const PreferencePair& pair = p < train_.size() ? train_[p] : validation_[p - train_.size()];
    for (size_t side = 0; side < 2; ++side) {
      const size_t at = (2 * i + side) * size_t(seq_);
      lay_out_row(side == 0 ? pair.chosen : pair.rejected, seq_, pad_, &m.inputs[at], &m.targets[at], &weights[at]);
    }
  }
  for (const double w : weights) m.trained_tokens += int64_t(w);
  return m;
}

void DpoData::compute_reference(const RowScorer& reference) {
  reference_.assign(2 * pairs(), 0.0);
  std::vector<double> weights;
  for (size_t first = 0; first < pairs(); first += size_t(batch_)) {
    std::vector<size_t> batch(std::min(size_t(batch_), pairs() - first));
    std::iota(batch.begin(), batch.end(), first);
    const MicroBatch m = rows(batch, weights);
    const std::vector<double> sums = reference(m, weights);
    std::copy(sums.begin(), sums.end(), reference_.begin() + ptrdiff_t(2 * first));
  }
}

void DpoData::set_reference(std::vector<double> values) {
  if (values.size() != 2 * pairs())
    fail("the reference log-probabilities are for {} pairs, not {}", values.size() / 2, pairs());
  reference_ = std::move(values);
}

MicroBatch DpoData::batch_of(const std::vector<size_t>& pairs, double pairs_in_step) {
  if (reference_.size() != 2 * this->pairs()) fail("DPO needs the reference model's log-probabilities first");
  std::vector<double> weights;
  MicroBatch m = rows(pairs, weights);
  m.metrics = std::make_shared<std::map<std::string, double>>();
  std::vector<double> reference;
  for (const size_t p : pairs) reference.insert(reference.end(), {reference_[2 * p], reference_[2 * p + 1]});
  const int64_t seq = seq_;
  const double beta = beta_;
  m.objective = [weights = std::move(weights), reference = std::move(reference), metrics = m.metrics, seq, beta,
                 pairs_in_step](std::span<const double> logprobs, std::span<double> gradient) {
    const size_t rows = logprobs.size() / size_t(seq);
    std::vector<double> sums(rows, 0.0);
    for (size_t r = 0; r < rows; ++r)
      for (size_t i = 0; i < size_t(seq); ++i) sums[r] += weights[r * size_t(seq) + i] * logprobs[r * size_t(seq) + i];
    double loss = 0;
    for (size_t pair = 0; pair < rows / 2; ++pair) {
      const double chosen = beta * (sums[2 * pair] - reference[2 * pair]);
      const double rejected = beta * (sums[2 * pair + 1] - reference[2 * pair + 1]);
      const double z = chosen - rejected;
      loss -= log_sigmoid(z) / pairs_in_step;
      // d loss / d sum(chosen) = -β σ(-z) / pairs, the rejected the opposite; each reply token
      // carries its row's.
      const double d = -beta * sigmoid(-z) / pairs_in_step;
      for (size_t i = 0; i < size_t(seq); ++i) {
        gradient[2 * pair * size_t(seq) + i] = d * weights[2 * pair * size_t(seq) + i];
        gradient[(2 * pair + 1) * size_t(seq) + i] = -d * weights[(2 * pair + 1) * size_t(seq) + i];
      }
      (*metrics)["accuracy"] += (z > 0 ? 1.0 : 0.0) / pairs_in_step;
      (*metrics)["margin"] += z / pairs_in_step;
      (*metrics)["chosen_reward"] += chosen / pairs_in_step;
      (*metrics)["rejected_reward"] += rejected / pairs_in_step;
    }
    return loss;
  };
  return m;
}

MicroBatch DpoData::train_batch(int64_t first, int64_t count, int64_t step_examples) {
  std::vector<size_t> pairs;
  for (int64_t k = first; k < first + count; ++k) pairs.push_back(order_(k));
  MicroBatch m = batch_of(pairs, double(step_examples));
  m.share = double(count) / double(step_examples);
  return m;
}

int64_t DpoData::validation_batches() const { return (int64_t(validation_.size()) + batch_ - 1) / batch_; }

MicroBatch DpoData::validation_batch(int64_t index) {
  std::vector<size_t> pairs;
  for (int64_t k = index * batch_; k < std::min<int64_t>((index + 1) * batch_, int64_t(validation_.size())); ++k)
    pairs.push_back(train_.size() + size_t(k));
  return batch_of(pairs, double(validation_.size()));
}

}  // namespace deepmoe::train
