#include "infer/generator.h"

#include <algorithm>

#include "core/error.h"
#include "infer/speculative.h"

namespace deepmoe {

GenerationStats generate(Model& model, std::span<const int32_t> prompt, int64_t n_new, const SamplingParams& params,
                         const std::function<bool(int32_t)>& on_token, const Speculation* speculation) {
  if (prompt.empty()) fail("generate: the prompt has no tokens");
  if (n_new < 0) fail("generate: -n must be >= 0, found {}", n_new);
  if (speculation && speculation->tokens > 0)
    return generate_speculative(model, prompt, n_new, params, on_token, *speculation);
  const Config& c = model.config();
  Sampler sampler(params);
  LatentCache cache(c, int64_t(prompt.size()) + n_new);
  std::vector<float> logits(size_t(c.vocab_size));
  std::vector<int32_t> history(prompt.begin(), prompt.end());
  GenerationStats stats;
  stats.prompt_tokens = int64_t(prompt.size());
  if (n_new == 0) return stats;

  using Clock = std::chrono::steady_clock;
  auto start = Clock::now();
  for (size_t first = 0; first < prompt.size(); first += kPrefillChunk) {
    const size_t count = std::min<size_t>(kPrefillChunk, prompt.size() - first);
    model.forward(prompt.subspan(first, count), cache, LogitsFor::LastToken, logits.data());
  }
  int32_t token = sampler.sample(logits, history);
  stats.prefill_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  history.push_back(token);
  stats.generated_tokens = 1;
  bool more = on_token(token);

  start = Clock::now();
  while (more && stats.generated_tokens < n_new) {
    model.forward(std::span<const int32_t>(&token, 1), cache, LogitsFor::LastToken, logits.data());
    stats.experts_read += model.experts_read();
    token = sampler.sample(logits, history);
    history.push_back(token);
    ++stats.generated_tokens;
    more = on_token(token);
  }
  stats.decode_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return stats;
}

}  // namespace deepmoe
