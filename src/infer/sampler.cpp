#include "infer/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "kernels/ops.h"

namespace deepmoe {

void validate(const SamplingParams& p) {
  if (!(p.temperature >= 0.0f) || !std::isfinite(p.temperature)) fail("--temperature must be >= 0, found {}", p.temperature);
  if (p.top_k < 0) fail("--top-k must be >= 0, found {}", p.top_k);
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) fail("--top-p must be in (0, 1], found {}", p.top_p);
  if (!(p.min_p >= 0.0f && p.min_p <= 1.0f)) fail("--min-p must be in [0, 1], found {}", p.min_p);
  if (!(p.repetition_penalty > 0.0f) || !std::isfinite(p.repetition_penalty))
    fail("--repetition-penalty must be > 0, found {}", p.repetition_penalty);
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) { validate(params); }

int32_t Sampler::sample(std::span<float> logits, std::span<const int32_t> history) {
  const int64_t vocab = int64_t(logits.size());
  if (params_.repetition_penalty != 1.0f) {
    // Each distinct token is penalized once, however often it appeared.
    std::vector<int32_t> seen(history.begin(), history.end());
    std::sort(seen.begin(), seen.end());
    seen.erase(std::unique(seen.begin(), seen.end()), seen.end());
    for (int32_t token : seen) {
      if (token < 0 || token >= vocab) continue;
      float& logit = logits[size_t(token)];
      logit = logit > 0 ? logit / params_.repetition_penalty : logit * params_.repetition_penalty;
    }
  }
  if (params_.temperature == 0.0f) {
    // First maximum wins: deterministic whatever produced the logits.
    return int32_t(first_argmax(logits.data(), vocab));
  }

  candidates_.resize(size_t(vocab));
  std::iota(candidates_.begin(), candidates_.end(), 0);
  auto by_logit = [&](int32_t a, int32_t b) { return logits[size_t(a)] > logits[size_t(b)] || (logits[size_t(a)] == logits[size_t(b)] && a < b); };
  int64_t kept = vocab;
  if (params_.top_k > 0 && params_.top_k < vocab) {
    std::partial_sort(candidates_.begin(), candidates_.begin() + params_.top_k, candidates_.end(), by_logit);
    kept = params_.top_k;
  } else {
    std::sort(candidates_.begin(), candidates_.end(), by_logit);
  }
  // Softmax over the kept candidates at the given temperature (sorted best first).
  probabilities_.resize(size_t(kept));
  const double max_logit = logits[size_t(candidates_[0])];
  double total = 0.0;
  for (int64_t i = 0; i < kept; ++i) {
    probabilities_[size_t(i)] = float(std::exp((double(logits[size_t(candidates_[size_t(i)])]) - max_logit) / params_.temperature));
    total += probabilities_[size_t(i)];
  }
  for (int64_t i = 0; i < kept; ++i) probabilities_[size_t(i)] = float(probabilities_[size_t(i)] / total);
  if (params_.top_p < 1.0f) {  // smallest prefix whose mass reaches top_p
    double mass = 0.0;
    for (int64_t i = 0; i < kept; ++i) {
      mass += probabilities_[size_t(i)];
      if (mass >= params_.top_p) {
        kept = i + 1;
        break;
      }
    }
  }
  if (params_.min_p > 0.0f) {
    const float threshold = params_.min_p * probabilities_[0];
    int64_t i = 1;
    while (i < kept && probabilities_[size_t(i)] >= threshold) ++i;
    kept = i;
  }
  double kept_mass = 0.0;
  for (int64_t i = 0; i < kept; ++i) kept_mass += probabilities_[size_t(i)];
  double draw = std::uniform_real_distribution<double>(0.0, kept_mass)(rng_);
  for (int64_t i = 0; i < kept; ++i) {
    draw -= probabilities_[size_t(i)];
    if (draw < 0.0) return candidates_[size_t(i)];
  }
  return candidates_[size_t(kept - 1)];
}

}  // namespace deepmoe
