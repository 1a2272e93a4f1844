#include <unistd.h>

#include <cstdio>
#include <iostream>

#include "cli/common.h"
#include "core/error.h"
#include "infer/generator.h"
#include "infer/speculative.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace deepmoe::cli {

void add_chat_command(CLI::App& app) {
  struct Options {
    LoadOptions load;
    std::string model, system;
    int64_t max_reply = 512;
    int threads = 0;
    SamplingParams sampling;
    SpeculativeOptions speculative;
  };
  auto options = std::make_shared<Options>();
  auto* command = app.add_subcommand(
      "chat", "Chat through the model's chat template: one user message per line of stdin, replies streamed");
  command->add_option("--model", options->model, "HuggingFace model directory with tokenizer files")->required();
  add_load_options(command, options->load);
  command->add_option("--system", options->system, "system prompt");
  command->add_option("-n", options->max_reply, "most tokens per reply");
  command->add_option("--threads", options->threads, "threads (0: all cores)");
  add_sampling_options(command, options->sampling);
  add_speculative_options(command, options->speculative);
  command->callback([options] {
    validate(options->sampling);
    const SpeculativeFlag speculative = parse_speculative(options->speculative.spec);
    if (options->max_reply < 1) fail("-n must be >= 1, found {}", options->max_reply);
    const auto tokenizer = load_model_tokenizer(options->model);
    if (tokenizer->chat_template().empty()) fail("{}: tokenizer_config.json has no chat_template", options->model);
    const ChatTemplate chat_template(tokenizer->chat_template());
    const auto weights = load_model(options->model, options->load);
    Model model(*weights, resolve_threads(options->threads));
    apply_draft_vocab(options->speculative, model);
    std::unique_ptr<ModelWeights> draft_weights;
    const auto draft_model =
        load_draft_model(speculative, options->model, resolve_threads(options->threads), draft_weights);
    const Speculation speculation{speculative.tokens, draft_model.get()};
    const bool interactive = isatty(STDIN_FILENO) != 0;
    if (interactive) fmt::print(stderr, "deepmoe chat: one message per line; /reset starts over; Ctrl-D ends\n");

    nlohmann::json messages = nlohmann::json::array();
    if (!options->system.empty()) messages.push_back({{"role", "system"}, {"content", options->system}});
    const nlohmann::json initial = messages;
    std::string line;
    while (true) {
      if (interactive) fmt::print(stderr, "> ");
      if (!std::getline(std::cin, line)) break;
      if (line == "/reset") {
        messages = initial;
        continue;
      }
      if (line.empty()) continue;
      messages.push_back({{"role", "user"}, {"content", line}});
      // The whole conversation is rendered and prefilled again each turn (prefix reuse is the
      // server's paged cache, issue 6). The template adds BOS itself, as HF's apply_chat_template.
      const std::string prompt = chat_template.render(messages, true, tokenizer->bos_token(), tokenizer->eos_token());
      const auto ids = tokenizer->encode(prompt, false);
      StreamingDecoder stream(*tokenizer, true);
      std::string reply;
      generate(
          model, ids, options->max_reply, options->sampling,
          [&](int32_t token) {
            if (tokenizer->eos_id() && token == *tokenizer->eos_id()) return false;
            const std::string text = stream.push(token);
            reply += text;
            fmt::print("{}", text);
            std::fflush(stdout);
            return true;
          },
          &speculation);
      const std::string rest = stream.finish();
      reply += rest;
      fmt::print("{}\n", rest);
      std::fflush(stdout);
      messages.push_back({{"role", "assistant"}, {"content", reply}});
    }
  });
}

}  // namespace deepmoe::cli
