// GRPO's rollouts from the weights being trained: the serving engine (continuous batching, paged
// latent cache) over a Model laid on the trainer's flat parameters without a copy, built anew for
// each call so that everything derived from the weights (absorbed attention) follows them.
#pragma once
#include <memory>

#include "infer/sampler.h"
#include "tokenizer/tokenizer.h"
#include "train/grpo_data.h"

namespace deepmoe {

struct PolicySamplerOptions {
  int threads = 1;
  int64_t max_tokens = 128;
  SamplingParams sampling;  // its seed is the call's, plus the completion's index
  double kv_cache_mb = 256;
};

train::RolloutSampler policy_sampler(std::shared_ptr<const Tokenizer> tokenizer, const PolicySamplerOptions& options);

}  // namespace deepmoe
