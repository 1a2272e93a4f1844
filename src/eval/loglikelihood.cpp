#include "eval/loglikelihood.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace deepmoe::eval {

namespace {

// log softmax(row)[token], and whether token is the row's argmax (the first one, as torch's).
std::pair<double, bool> log_prob(const float* row, int64_t vocab, int32_t token) {
  const float* best = std::max_element(row, row + vocab);
  double sum = 0;
  for (int64_t v = 0; v < vocab; ++v) sum += std::exp(double(row[v]) - double(*best));
  return {double(row[token]) - double(*best) - std::log(sum), best - row == token};
}

}  // namespace

std::vector<ContinuationScore> score_continuations(Model& model, LatentCache& cache, std::span<const int32_t> context,
                                                   std::span<const std::vector<int32_t>> continuations,
                                                   bool reuse_context) {
  const int64_t vocab = model.config().vocab_size;
  if (context.empty()) fail("loglikelihood: the context has no tokens");
  size_t longest = 0;
  for (const auto& c : continuations) {
    if (c.empty()) fail("loglikelihood: a continuation has no tokens");
    longest = std::max(longest, c.size());
  }
  if (int64_t(context.size() + longest) > cache.capacity)
    fail("loglikelihood: {} context tokens and a continuation of {} exceed the {} positions of the cache",
         context.size(), longest, cache.capacity);
  // The context once: its last logits predict every continuation's first token.
  std::vector<float> first(static_cast<size_t>(vocab)), rows;
  cache.length = 0;
  if (reuse_context) model.forward(context, cache, LogitsFor::LastToken, first.data());
  const int64_t prefix = cache.length;
  std::vector<ContinuationScore> scores;
  std::vector<int32_t> whole;
  for (const auto& c : continuations) {
    // `predicting`: row i holds the logits that predict c[i].
    const float* predicting = nullptr;
    if (reuse_context) {  // the first token's row, then the continuation but its last token from the cache
      rows.resize(c.size() * size_t(vocab));
      std::copy(first.begin(), first.end(), rows.begin());
      if (c.size() > 1) {
        cache.length = prefix;
        model.forward(std::span(c).first(c.size() - 1), cache, LogitsFor::AllTokens, rows.data() + vocab);
      }
      predicting = rows.data();
    } else {  // the context again from position 0, then the continuation but its last token
      whole.assign(context.begin(), context.end());
      whole.insert(whole.end(), c.begin(), c.end() - 1);
      rows.resize(whole.size() * size_t(vocab));
      cache.length = 0;
      model.forward(whole, cache, LogitsFor::AllTokens, rows.data());
      predicting = rows.data() + (context.size() - 1) * size_t(vocab);
    }
    ContinuationScore s;
    s.tokens = int64_t(c.size());
    s.greedy = true;
    for (size_t i = 0; i < c.size(); ++i) {
      const auto [token_lp, token_greedy] = log_prob(predicting + i * size_t(vocab), vocab, c[i]);
      s.logprob += token_lp;
      s.greedy = s.greedy && token_greedy;
    }
    scores.push_back(s);
  }
  return scores;
}

}  // namespace deepmoe::eval
