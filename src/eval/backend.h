// Where an evaluation's requests run: this process's model, through the serving engine's
// continuous batching (engine_backend.h), or any OpenAI-compatible server (http_backend.h). A task
// hands over all its requests at once so either side can batch them; the answers come back in
// the same order.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "eval/loglikelihood.h"
#include "eval/multiple_choice.h"
#include "infer/sampler.h"

namespace deepmoe::eval {

struct GenerationRequest {
  std::string prompt;  // text; the tokenizer adds its BOS, as the server's /v1/completions does
  std::vector<std::string> stop;
  int64_t max_tokens = 256;
  SamplingParams sampling;  // temperature 0: greedy
  bool ignore_eos = false;  // generate max_tokens whatever the model says (the latency probe)
};

struct Generation {
  std::string text;  // up to (not including) a stop string
  int64_t prompt_tokens = 0, tokens = 0;
  double first_token_seconds = 0, seconds = 0;  // from the request's submission
};

// `text` up to the first occurrence of any stop string (lm-eval cuts the decoded text so).
std::string cut_at_stop_sequences(std::string_view text, const std::vector<std::string>& stops);

class Backend {
 public:
  virtual ~Backend() = default;
  // Each question's continuations scored given its context (lm-eval's loglikelihood requests).
  virtual std::vector<std::vector<ContinuationScore>> loglikelihood(std::span<const EncodedQuestion> questions) = 0;
  virtual std::vector<Generation> generate(std::span<const GenerationRequest> requests) = 0;
  // Prompt tokens the backend ran through the model so far (what a log-likelihood task costs).
  virtual int64_t tokens_computed() const = 0;
};

}  // namespace deepmoe::eval
