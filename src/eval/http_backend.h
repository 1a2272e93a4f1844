// The evaluation's requests against an OpenAI-compatible server (deepmoe serve, vLLM,
// llama-server, ...) over /v1/completions, as lm-evaluation-harness's local-completions model
// sends them: log-likelihoods as the prompt's token ids with echo and logprobs (the scored tokens'
// log-probabilities come back with the echoed prompt), generations as text with stop strings,
// streamed so the time to the first token can be measured. Several requests in flight at once.
#pragma once
#include <atomic>
#include <string>

#include "eval/backend.h"
#include "tokenizer/tokenizer.h"

namespace deepmoe::eval {

struct HttpBackendOptions {
  std::string endpoint;  // http(s)://host:port, optionally with /v1 or /v1/completions
  std::string api_key;   // sent as Authorization: Bearer
  std::string model;     // the model id to send (empty: the first of /v1/models)
  int concurrency = 8;   // requests in flight
  double timeout_seconds = 600;
};

class HttpBackend : public Backend {
 public:
  // Checks the endpoint's form and asks /v1/models for the model id when none is given; throws
  // Error naming the endpoint when it cannot be reached or answers with an error.
  HttpBackend(const Tokenizer& tokenizer, HttpBackendOptions options);
  std::vector<std::vector<ContinuationScore>> loglikelihood(std::span<const EncodedQuestion> questions) override;
  std::vector<Generation> generate(std::span<const GenerationRequest> requests) override;
  int64_t tokens_computed() const override { return prompt_tokens_; }
  const std::string& model() const { return options_.model; }

 private:
  HttpBackendOptions options_;
  std::string origin_, prefix_;  // "http://host:port" and the path before /v1
  std::atomic<int64_t> prompt_tokens_{0};
};

}  // namespace deepmoe::eval
