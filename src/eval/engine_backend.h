// The evaluation's requests on this process's model through the serving engine: continuous
// batching across questions and choices, and its prefix cache for a question's shared context
// (each question's first choice runs the context; the other choices start from its cached
// blocks, as llama-perplexity batches a task's endings). Generation runs each request as the
// server would (serve/completion_run.h), so scores in process and over HTTP agree.
#pragma once
#include <memory>

#include "eval/backend.h"
#include "serve/engine.h"
#include "serve/metrics.h"
#include "tokenizer/tokenizer.h"

namespace deepmoe::eval {

struct EngineBackendOptions {
  int64_t context = 0;  // longest request, prompt plus output
  double kv_cache_mb = 1024;
  int64_t max_batch = 32, max_batch_tokens = 512;
  bool naive = false;  // log-likelihood: one plain forward per choice, context and all, no batching
};

class EngineBackend : public Backend {
 public:
  EngineBackend(Model& model, const Tokenizer& tokenizer, const EngineBackendOptions& options);
  std::vector<std::vector<ContinuationScore>> loglikelihood(std::span<const EncodedQuestion> questions) override;
  std::vector<Generation> generate(std::span<const GenerationRequest> requests) override;
  int64_t tokens_computed() const override;

 private:
  Model& model_;
  const Tokenizer& tokenizer_;
  EngineBackendOptions options_;
  std::unique_ptr<Engine> engine_;
  Metrics metrics_;
  int64_t naive_tokens_ = 0;
};

}  // namespace deepmoe::eval
