#include <cstdio>

#include "cli/common.h"
#include "core/error.h"
#include "infer/generator.h"

namespace deepmoe::cli {

void add_generate_command(CLI::App& app) {
  struct Options {
    std::string model, tokens;
    int64_t n_new = 16;
    int threads = 0;
    SamplingParams sampling;
  };
  auto options = std::make_shared<Options>();
  auto* command = app.add_subcommand("generate", "Generate tokens after a prompt");
  command->add_option("--model", options->model, "HuggingFace model directory")->required();
  command->add_option("--tokens", options->tokens, "prompt as comma-separated token ids")->required();
  command->add_option("-n", options->n_new, "tokens to generate");
  command->add_option("--threads", options->threads, "threads (0: all cores)");
  command->add_option("--temperature", options->sampling.temperature, "0: greedy and deterministic");
  command->add_option("--top-k", options->sampling.top_k, "keep the k most likely tokens (0: off)");
  command->add_option("--top-p", options->sampling.top_p, "nucleus sampling mass (1: off)");
  command->add_option("--min-p", options->sampling.min_p, "drop tokens below min-p times the best (0: off)");
  command->add_option("--repetition-penalty", options->sampling.repetition_penalty, "1: off");
  command->add_option("--seed", options->sampling.seed, "sampling seed");
  command->callback([options] {
    validate(options->sampling);
    if (options->n_new < 0) fail("-n must be >= 0, found {}", options->n_new);
    const auto prompt = parse_token_list(options->tokens);
    const auto weights = load_model(options->model);
    Model model(*weights, resolve_threads(options->threads));
    bool first = true;
    const auto stats = generate(model, prompt, options->n_new, options->sampling, [&](int32_t token) {
      fmt::print("{}{}", first ? "" : ",", token);
      std::fflush(stdout);
      first = false;
    });
    fmt::print("\n");
    fmt::print(stderr, "prefill: {} tokens, {:.1f} tok/s; decode: {} tokens, {:.1f} tok/s\n", stats.prompt_tokens,
               stats.prefill_tokens_per_second(), stats.generated_tokens, stats.decode_tokens_per_second());
  });
}

}  // namespace deepmoe::cli
