#include "infer/sampler.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "kernels/ops.h"

namespace deepmoe {

void validate(const SamplingParams& p) {
  if (!(p.temperature >= 0.0f) || !std::isfinite(p.temperature))
    fail("--temperature must be >= 0, found {}", p.temperature);
  if (p.top_k < 0) fail("--top-k must be >= 0, found {}", p.top_k);
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) fail("--top-p must be in (0, 1], found {}", p.top_p);
  if (!(p.min_p >= 0.0f && p.min_p <= 1.0f)) fail("--min-p must be in [0, 1], found {}", p.min_p);
  if (!(p.repetition_penalty > 0.0f) || !std::isfinite(p.repetition_penalty))
    fail("--repetition-penalty must be > 0, found {}", p.repetition_penalty);
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) { validate(params); }

namespace {
// Best first: the higher logit, and of equal logits the lower id (the order top_k, top_p and
// min_p are defined in).
auto best_first(std::span<const float> logits) {
  return [logits](int32_t a, int32_t b) {
    return logits[size_t(a)] > logits[size_t(b)] || (logits[size_t(a)] == logits[size_t(b)] && a < b);
  };
}
}  // namespace

// top_p on candidates sorted best first: the shortest prefix whose mass reaches top_p.
int64_t Sampler::sorted_nucleus(int64_t kept) const {
  double mass = 0.0;
  for (int64_t i = 0; i < kept; ++i) {
    mass += probabilities_[size_t(candidates_[size_t(i)])];
    if (mass >= params_.top_p) return i + 1;
  }
  return kept;
}

// top_p on unsorted candidates: the same set as sorting them all and taking the shortest prefix
// whose mass reaches top_p, without the sort (per token over a 129k vocabulary it cost more than
// a small model's whole step). Tokens go into buckets by how far their logit is below the best
// (an eighth of a nat each, so bucket order is logit order); whole buckets are in while the
// mass stays under top_p, and only the bucket that crosses it is sorted. Moves the nucleus to
// the front of candidates_ and returns its size.
int64_t Sampler::nucleus(std::span<const float> logits, float max_logit, int64_t kept) {
  constexpr int kBuckets = 256;
  constexpr double kPerNat = 8.0;
  const double scale = kPerNat / params_.temperature;
  auto bucket_of = [&](int32_t token) {
    return int(std::min(double(kBuckets - 1), (double(max_logit) - logits[size_t(token)]) * scale));
  };
  std::array<double, kBuckets> mass{};
  for (int64_t i = 0; i < kept; ++i)
    mass[size_t(bucket_of(candidates_[size_t(i)]))] += probabilities_[size_t(candidates_[size_t(i)])];
  double below = 0.0;  // the mass of the buckets before `crossing`
  int crossing = 0;
  for (; crossing < kBuckets - 1 && below + mass[size_t(crossing)] < params_.top_p; ++crossing)
    below += mass[size_t(crossing)];
  auto begin = candidates_.begin(), end = candidates_.begin() + kept;
  auto inside = std::partition(begin, end, [&](int32_t token) { return bucket_of(token) < crossing; });
  auto crossing_end = std::partition(inside, end, [&](int32_t token) { return bucket_of(token) == crossing; });
  std::sort(inside, crossing_end, best_first(logits));
  for (auto it = inside; it != crossing_end; ++it) {
    below += probabilities_[size_t(*it)];
    if (below >= params_.top_p) return (it - begin) + 1;
  }
  return crossing_end - begin;
}

int64_t Sampler::keep(std::span<float> logits, std::span<const int32_t> history) {
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
    candidates_.assign(1, int32_t(first_argmax(logits.data(), vocab)));
    return 0;
  }

  // The candidates: every token (in id order), or the top_k best (sorted best first).
  candidates_.resize(size_t(vocab));
  std::iota(candidates_.begin(), candidates_.end(), 0);
  int64_t kept = vocab;
  const bool sorted = params_.top_k > 0 && params_.top_k < vocab;
  if (sorted) {
    std::partial_sort(candidates_.begin(), candidates_.begin() + params_.top_k, candidates_.end(), best_first(logits));
    kept = params_.top_k;
  }
  const int32_t best = sorted ? candidates_[0] : int32_t(first_argmax(logits.data(), vocab));
  // Softmax over the kept candidates at the given temperature, by token id.
  probabilities_.resize(size_t(vocab));
  if (kept == vocab) {
    const float inverse_temperature = 1.0f / params_.temperature;
    for (int64_t i = 0; i < vocab; ++i) probabilities_[size_t(i)] = logits[size_t(i)] * inverse_temperature;
    softmax_inplace(probabilities_.data(), vocab);
  } else {
    const double max_logit = logits[size_t(candidates_[0])];
    double total = 0.0;
    for (int64_t i = 0; i < kept; ++i) {
      const int32_t token = candidates_[size_t(i)];
      probabilities_[size_t(token)] =
          float(std::exp((double(logits[size_t(token)]) - max_logit) / params_.temperature));
      total += probabilities_[size_t(token)];
    }
    for (int64_t i = 0; i < kept; ++i) {
      float& p = probabilities_[size_t(candidates_[size_t(i)])];
      p = float(p / total);
    }
  }
  if (params_.top_p < 1.0f) kept = sorted ? sorted_nucleus(kept) : nucleus(logits, logits[size_t(best)], kept);
  if (params_.min_p > 0.0f) {  // the kept tokens at least min_p times as likely as the best
    const float threshold = params_.min_p * probabilities_[size_t(best)];
    kept = std::partition(candidates_.begin(), candidates_.begin() + kept,
                          [&](int32_t token) { return probabilities_[size_t(token)] >= threshold; }) -
           candidates_.begin();
  }
  return kept;
}

int32_t Sampler::sample(std::span<float> logits, std::span<const int32_t> history) {
  const int64_t kept = keep(logits, history);
  if (kept == 0) return candidates_[0];
  auto probability = [&](int64_t i) { return probabilities_[size_t(candidates_[size_t(i)])]; };
  double kept_mass = 0.0;
  for (int64_t i = 0; i < kept; ++i) kept_mass += probability(i);
  double draw = std::uniform_real_distribution<double>(0.0, kept_mass)(rng_);
  for (int64_t i = 0; i < kept; ++i) {
    draw -= probability(i);
    if (draw < 0.0) return candidates_[size_t(i)];
  }
  return candidates_[size_t(kept - 1)];
}

std::span<const float> Sampler::distribution(std::span<float> logits, std::span<const int32_t> history) {
  const int64_t kept = keep(logits, history);
  distribution_.assign(logits.size(), 0.0f);
  if (kept == 0) {
    distribution_[size_t(candidates_[0])] = 1.0f;
    return distribution_;
  }
  double kept_mass = 0.0;
  for (int64_t i = 0; i < kept; ++i) kept_mass += probabilities_[size_t(candidates_[size_t(i)])];
  for (int64_t i = 0; i < kept; ++i) {
    const int32_t token = candidates_[size_t(i)];
    distribution_[size_t(token)] = float(double(probabilities_[size_t(token)]) / kept_mass);
  }
  return distribution_;
}

double Sampler::uniform() { return std::uniform_real_distribution<double>(0.0, 1.0)(rng_); }

int32_t Sampler::draw(std::span<const float> weights, int32_t excluded) {
  double total = 0.0;
  for (size_t i = 0; i < weights.size(); ++i)
    if (int32_t(i) != excluded) total += weights[i];
  if (!(total > 0.0)) fail("sampler: nothing to draw from (the weights sum to {})", total);
  double left = std::uniform_real_distribution<double>(0.0, total)(rng_);
  int32_t last = 0;
  for (size_t i = 0; i < weights.size(); ++i) {
    if (weights[i] <= 0.0f || int32_t(i) == excluded) continue;
    last = int32_t(i);
    left -= weights[i];
    if (left < 0.0) return last;
  }
  return last;
}

}  // namespace deepmoe
