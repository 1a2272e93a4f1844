// One sequence's generation: prefill the prompt in chunks, then decode token by token.
#pragma once
#include <chrono>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "infer/sampler.h"
#include "model/model.h"

namespace deepmoe {

struct GenerationStats {
  int64_t prompt_tokens = 0, generated_tokens = 0;
  double prefill_seconds = 0.0, decode_seconds = 0.0;
  // Speculative decoding: verify steps, tokens drafted, drafts accepted, and per draft position j
  // the steps whose drafts 1..j+1 were all accepted (accepted_at[0] / steps: the first draft's rate).
  int64_t verify_steps = 0, drafted = 0, accepted = 0;
  std::vector<int64_t> accepted_at;
  // Routed experts the decode passes ran (Model::experts_read), summed: per step, the expert
  // weights a step reads (a verify pass reads each expert its positions share once).
  int64_t experts_read = 0;
  double prefill_tokens_per_second() const { return prefill_seconds > 0 ? double(prompt_tokens) / prefill_seconds : 0; }
  // The first generated token comes from the prefill; decode timing covers the rest.
  double decode_tokens_per_second() const {
    return decode_seconds > 0 ? double(generated_tokens - 1) / decode_seconds : 0;
  }
};

// Prompt chunks up to this many tokens go through one forward call (bounds scratch memory).
constexpr int64_t kPrefillChunk = 512;

// Generates up to n_new tokens after `prompt`; on_token is called with each as it is chosen and
// returns false to stop there (an end-of-sequence token, a stop string).
// Allocates the latent cache for prompt + n_new tokens. With speculation.tokens > 0, speculative
// decoding (infer/speculative.h): the same output, drafted by the MTP module or a draft model.
struct Speculation;
GenerationStats generate(Model& model, std::span<const int32_t> prompt, int64_t n_new, const SamplingParams& params,
                         const std::function<bool(int32_t)>& on_token, const Speculation* speculation = nullptr);

}  // namespace deepmoe
