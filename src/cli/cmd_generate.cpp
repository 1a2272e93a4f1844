#include <cstdio>

#include "cli/common.h"
#include "core/error.h"
#include "infer/generator.h"
#include "infer/speculative.h"
#include "tokenizer/tokenizer.h"

namespace deepmoe::cli {

void add_generate_command(CLI::App& app) {
  struct Options {
    LoadOptions load;
    std::string model, tokens, prompt;
    int64_t n_new = 16;
    int threads = 0;
    SamplingParams sampling;
    SpeculativeOptions speculative;
  };
  auto options = std::make_shared<Options>();
  auto* command = app.add_subcommand("generate", "Generate after a prompt (text, or token ids)");
  command->add_option("--model", options->model, "HuggingFace model directory")->required();
  add_load_options(command, options->load);
  auto* tokens = command->add_option("--tokens", options->tokens, "prompt as comma-separated token ids (prints ids)");
  auto* prompt =
      command->add_option("--prompt", options->prompt, "prompt text (needs the model's tokenizer.json; prints text)");
  tokens->excludes(prompt);
  command->add_option("-n", options->n_new, "tokens to generate (text generation also stops at EOS)");
  command->add_option("--threads", options->threads, "threads (0: all cores)");
  add_sampling_options(command, options->sampling);
  add_speculative_options(command, options->speculative);
  command->callback([options, tokens, prompt] {
    if (!*tokens && !*prompt) fail("generate needs --prompt TEXT or --tokens IDS");
    validate(options->sampling);
    if (options->n_new < 0) fail("-n must be >= 0, found {}", options->n_new);
    const SpeculativeFlag speculative = parse_speculative(options->speculative.spec);
    std::unique_ptr<Tokenizer> tokenizer;
    std::vector<int32_t> ids;
    if (*prompt) {
      tokenizer = load_model_tokenizer(options->model);
      ids = tokenizer->encode(options->prompt, true);  // BOS as the tokenizer's config says, like HF
    } else {
      ids = parse_token_list(options->tokens);
    }
    const auto weights = load_model(options->model, options->load);
    Model model(*weights, resolve_threads(options->threads));
    apply_draft_vocab(options->speculative, model);
    std::unique_ptr<ModelWeights> draft_weights;
    const auto draft_model =
        load_draft_model(speculative, options->model, resolve_threads(options->threads), draft_weights);
    const Speculation speculation{speculative.tokens, draft_model.get()};
    bool first = true;
    std::unique_ptr<StreamingDecoder> text;
    if (tokenizer) text = std::make_unique<StreamingDecoder>(*tokenizer, true);
    const auto stats = generate(
        model, ids, options->n_new, options->sampling,
        [&](int32_t token) {
          if (text) {
            if (tokenizer->eos_id() && token == *tokenizer->eos_id()) return false;
            fmt::print("{}", text->push(token));
          } else {
            fmt::print("{}{}", first ? "" : ",", token);
          }
          std::fflush(stdout);
          first = false;
          return true;
        },
        &speculation);
    fmt::print("{}\n", text ? text->finish() : "");
    fmt::print(stderr, "prefill: {} tokens, {:.1f} tok/s; decode: {} tokens, {:.1f} tok/s\n", stats.prompt_tokens,
               stats.prefill_tokens_per_second(), stats.generated_tokens, stats.decode_tokens_per_second());
    const int64_t steps = stats.verify_steps > 0 ? stats.verify_steps : stats.generated_tokens - 1;
    if (steps > 0 && stats.experts_read > 0)
      fmt::print(stderr, "experts: {:.2f} routed experts read per decode step\n",
                 double(stats.experts_read) / double(steps));
    if (speculative.tokens > 0 && stats.verify_steps > 0) {
      std::string by_position;
      for (const int64_t n : stats.accepted_at)
        by_position += fmt::format(" {:.3f}", double(n) / double(stats.verify_steps));
      fmt::print(
          stderr, "speculative: {} steps, {} of {} drafts accepted ({:.1f}%), {:.2f} tokens a step; by position:{}\n",
          stats.verify_steps, stats.accepted, stats.drafted, 100.0 * double(stats.accepted) / double(stats.drafted),
          double(stats.accepted + stats.verify_steps) / double(stats.verify_steps), by_position);
    }
  });
}

}  // namespace deepmoe::cli
