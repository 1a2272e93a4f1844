// Turns a row of logits into the next token: repetition penalty, then greedy (temperature 0)
// or temperature → top-k → top-p → min-p → a draw from a seeded generator.
#pragma once
#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace deepmoe {

struct SamplingParams {
  float temperature = 0.0f;         // 0: greedy
  int64_t top_k = 0;                // 0: off
  float top_p = 1.0f;               // 1: off
  float min_p = 0.0f;               // 0: off; keeps tokens with p >= min_p * p_max
  float repetition_penalty = 1.0f;  // 1: off; as HF/CTRL: divide positive logits, multiply negative
  uint64_t seed = 0;
};

// Throws Error naming the flag when a value is out of range.
void validate(const SamplingParams& params);

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // logits is modified (penalty, scaling). history: tokens seen so far (prompt and output).
  int32_t sample(std::span<float> logits, std::span<const int32_t> history);

  // What sample() draws from, by token id: greedy is one-hot on the argmax; otherwise the kept
  // tokens' probabilities renormalized, zero elsewhere. Valid until the next call. (Speculative
  // decoding's acceptance test reads it.)
  std::span<const float> distribution(std::span<float> logits, std::span<const int32_t> history);
  // Draws from the sampler's generator: a uniform number in [0, 1), and a token by `weights` (by
  // token id, not necessarily normalized) leaving out `excluded` (-1: none); the rest must have a
  // positive total.
  double uniform();
  int32_t draw(std::span<const float> weights, int32_t excluded = -1);

 private:
  // Repetition penalty, then the candidates: greedy leaves the argmax in candidates_[0] and returns
  // 0; otherwise probabilities_ by token id and the kept candidates first in candidates_ (returns
  // how many).
  int64_t keep(std::span<float> logits, std::span<const int32_t> history);
  int64_t sorted_nucleus(int64_t kept) const;
  int64_t nucleus(std::span<const float> logits, float max_logit, int64_t kept);

  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<int32_t> candidates_;
  std::vector<float> probabilities_;  // by token id
  std::vector<float> distribution_;   // distribution()'s
};

}  // namespace deepmoe
