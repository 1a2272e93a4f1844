#include "serve/policy_sampler.h"

#include <algorithm>

#include "core/error.h"
#include "model/model.h"
#include "serve/engine.h"
#include "serve/paged_latent_cache.h"

namespace deepmoe {

train::RolloutSampler policy_sampler(std::shared_ptr<const Tokenizer> shared, const PolicySamplerOptions& options) {
  return [shared = std::move(shared), options](const train::Parameters& policy,
                                               const std::vector<const train::GrpoPrompt*>& prompts, int64_t group,
                                               uint64_t seed) {
    const Tokenizer& tokenizer = *shared;
    const Config& config = policy.config();
    // With the transposed key projections the absorbed decode needs (a view leaves them out).
    const auto weights = ModelWeights::view_f32(config, policy.values().data(), policy.list_offsets(), nullptr, true);
    ModelOptions model_options;
    model_options.threads = options.threads;
    model_options.attention_mode = AttentionMode::Absorbed;
    // Not batch-invariant: its f32 kernel caches packed weights by address for the server's
    // immutable weights, and these change every step.
    model_options.context.batch_invariant = false;
    Model model(*weights, model_options);
    EngineOptions e;
    size_t longest = 0;
    for (const auto* p : prompts) longest = std::max(longest, p->tokens.size());
    e.context = int64_t(longest) + options.max_tokens + 1;
    e.max_batch = std::min<int64_t>(64, int64_t(prompts.size()) * group);
    e.max_batch_tokens = 512;
    e.max_queue = int64_t(prompts.size()) * group;
    e.kv_blocks = std::max((e.context + e.block_tokens - 1) / e.block_tokens,
                           PagedLatentCache::blocks_for_bytes(config, e.cache_layers(config), e.block_tokens,
                                                              int64_t(options.kv_cache_mb * 1048576.0)));
    e.never_sample = unspellable_ids(tokenizer, config.vocab_size);
    Engine engine(model, e);
    std::vector<EngineRequest> requests;
    for (size_t i = 0; i < prompts.size() * size_t(group); ++i) {
      EngineRequest r;
      r.prompt = prompts[i / size_t(group)]->tokens;
      r.sampling = options.sampling;
      r.sampling.seed = seed + uint64_t(i);
      r.max_tokens = options.max_tokens;
      if (tokenizer.eos_id()) r.stop_tokens.push_back(*tokenizer.eos_id());
      r.deliver_stop_token = true;
      r.top_logprobs = 0;  // the chosen token's log-probability
      requests.push_back(std::move(r));
    }
    const std::vector<std::shared_ptr<RequestStream>> streams = engine.submit_all(std::move(requests));
    std::vector<train::SampledCompletion> out(streams.size());
    for (size_t i = 0; i < streams.size(); ++i) {
      EngineToken token;
      while (streams[i]->next(token, std::chrono::hours(1)) == RequestStream::Next::Token) {
        out[i].tokens.push_back(token.token);
        out[i].logprobs.push_back(token.logprob);
      }
      if (streams[i]->finish_reason() == FinishReason::Error) fail("sampling failed: {}", streams[i]->error());
      out[i].text = tokenizer.decode(out[i].tokens, true);
    }
    return out;
  };
}

}  // namespace deepmoe
