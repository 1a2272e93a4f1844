#include "eval/run_generation.h"

#include <algorithm>

namespace deepmoe::eval {

TaskResult run_gsm8k(Backend& backend, Gsm8kVariant variant, const std::vector<Problem>& problems,
                     const std::vector<Problem>& fewshot, int64_t max_gen_toks, TaskIo& io,
                     std::vector<Generation>& generations) {
  const std::string name = variant == Gsm8kVariant::Plain ? "gsm8k" : "gsm8k_cot";
  const std::vector<std::string> stops = gsm8k_stop_sequences(variant);
  std::vector<double> strict, flexible;
  // Slices big enough to keep the engine's batch full, small enough for the progress line.
  constexpr size_t kSlice = 128;
  for (size_t begin = 0; begin < problems.size(); begin += kSlice) {
    const size_t end = std::min(problems.size(), begin + kSlice);
    std::vector<GenerationRequest> requests;
    for (size_t i = begin; i < end; ++i) {
      GenerationRequest r;
      r.prompt = gsm8k_prompt(variant, fewshot, problems[i]);
      r.stop = stops;
      r.max_tokens = max_gen_toks > 0 ? max_gen_toks : gsm8k_max_gen_toks(variant);
      requests.push_back(std::move(r));
    }
    const std::vector<Generation> answers = backend.generate(requests);
    for (size_t i = begin; i < end; ++i) {
      const Generation& g = answers[i - begin];
      const std::string text = cut_at_stop_sequences(g.text, stops);
      const std::string target = gsm8k_target(variant, problems[i].answer);
      const std::string by_strict = extract_strict(variant, text), by_flexible = extract_flexible(text);
      strict.push_back(exact_match(by_strict, target) ? 1.0 : 0.0);
      flexible.push_back(exact_match(by_flexible, target) ? 1.0 : 0.0);
      if (io.log_sample)
        io.log_sample({{"task", name},
                       {"doc_id", i},
                       {"prompt", requests[i - begin].prompt},
                       {"target", target},
                       {"response", text},
                       {"filtered", {{"strict-match", by_strict}, {"flexible-extract", by_flexible}}},
                       {"exact_match", {{"strict-match", strict.back()}, {"flexible-extract", flexible.back()}}},
                       {"generated_tokens", g.tokens}});
      generations.push_back(g);
    }
    if (io.progress) io.progress->advance(int64_t(end - begin));
  }
  return {name,
          {{"exact_match,strict-match", std::move(strict)}, {"exact_match,flexible-extract", std::move(flexible)}}};
}

}  // namespace deepmoe::eval
