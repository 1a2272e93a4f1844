#include "eval/loglikelihood.h"

#include <algorithm>

#include "core/error.h"
#include "kernels/ops.h"

namespace deepmoe::eval {

std::vector<ContinuationScore> score_naively(Model& model, LatentCache& cache, std::span<const int32_t> context,
                                             std::span<const std::vector<int32_t>> continuations) {
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
  std::vector<float> rows;
  std::vector<int32_t> whole;
  std::vector<ContinuationScore> scores;
  for (const auto& c : continuations) {
    whole.assign(context.begin(), context.end());
    whole.insert(whole.end(), c.begin(), c.end() - 1);
    rows.resize(whole.size() * size_t(vocab));
    cache.length = 0;
    model.forward(whole, cache, LogitsFor::AllTokens, rows.data());
    // Row context.size() - 1 + i predicts c[i].
    const float* predicting = rows.data() + (context.size() - 1) * size_t(vocab);
    ContinuationScore s;
    s.tokens = int64_t(c.size());
    s.greedy = true;
    for (size_t i = 0; i < c.size(); ++i) {
      const float* row = predicting + i * size_t(vocab);
      s.logprob += double(row[c[i]]) - log_sum_exp(row, vocab);
      s.greedy = s.greedy && first_argmax(row, vocab) == c[i];
    }
    scores.push_back(s);
  }
  return scores;
}

}  // namespace deepmoe::eval
