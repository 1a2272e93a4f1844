// The log-likelihood of continuations given a context, as lm-evaluation-harness scores
// multiple-choice tasks: the sum over the continuation's tokens of log p(token | everything
// before it), and whether each of them was the model's greedy choice. The batched, cached path
// is the engine's (engine_backend.h); score_naively is the plain loop it is measured against.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "model/latent_cache.h"
#include "model/model.h"

namespace deepmoe::eval {

struct ContinuationScore {
  double logprob = 0;   // Σ log p(continuation token | context and the tokens before it)
  int64_t tokens = 0;   // the continuation's length in tokens
  bool greedy = false;  // every continuation token was the argmax
};

// One forward over context + continuation (but its last token) per continuation, from position
// 0: the naive loop. context: at least one token (lm-eval puts the BOS or EOS token there for an
// empty context); every continuation at least one token; `cache` must hold context plus the
// longest continuation (its contents are replaced). Throws Error on an empty context or
// continuation, or a sequence longer than the cache.
std::vector<ContinuationScore> score_naively(Model& model, LatentCache& cache, std::span<const int32_t> context,
                                             std::span<const std::vector<int32_t>> continuations);

}  // namespace deepmoe::eval
