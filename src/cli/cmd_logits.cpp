#include "cli/common.h"
#include "core/error.h"
#include "io/npy.h"
#include "model/model.h"

namespace deepmoe::cli {

void add_logits_command(CLI::App& app) {
  struct Options {
    LoadOptions load;
    std::string model, tokens, out, attention = "auto";
    int threads = 0;
    bool mtp = false;
  };
  auto options = std::make_shared<Options>();
  auto* command = app.add_subcommand("logits", "Write float32 logits [n_tokens, vocab] of one forward pass as .npy");
  command->add_option("--model", options->model, "HuggingFace model directory")->required();
  add_load_options(command, options->load);
  command->add_option("--tokens", options->tokens, "comma-separated token ids, e.g. 1,2,3")->required();
  command->add_option("--out", options->out, "output .npy file")->required();
  command->add_option("--threads", options->threads, "threads (0: all cores)");
  command->add_option("--attention", options->attention, "MLA form: auto, expanded or absorbed")
      ->check(CLI::IsMember({"auto", "expanded", "absorbed"}));
  command->add_flag("--mtp", options->mtp,
                    "the first multi-token-prediction module's logits instead: [n_tokens - 1, vocab], position i "
                    "drafting the token after tokens[i + 1]");
  command->callback([options] {
    const auto tokens = parse_token_list(options->tokens);
    const auto weights = load_model(options->model, options->load);
    ModelOptions model_options;
    model_options.threads = resolve_threads(options->threads);
    if (options->attention != "auto")
      model_options.attention_mode =
          options->attention == "expanded" ? AttentionMode::Expanded : AttentionMode::Absorbed;
    Model model(*weights, model_options);
    const int64_t n_tokens = int64_t(tokens.size()), vocab = weights->config.vocab_size;
    LatentCache cache(weights->config, n_tokens);
    std::vector<float> logits(size_t(n_tokens * vocab));
    if (!options->mtp) {
      model.forward(tokens, cache, LogitsFor::AllTokens, logits.data());
      write_npy_f32(options->out, logits.data(), {n_tokens, vocab});
      return;
    }
    if (weights->config.num_nextn_predict_layers == 0) fail("{}: --mtp: the model has no MTP module", options->model);
    if (n_tokens < 2) fail("--mtp needs at least 2 tokens");
    // The main pass's normed states, then the module over (h_i, tokens[i + 1]) through the same
    // cache path speculative decoding drafts with.
    std::vector<float> hidden(size_t(n_tokens * weights->config.hidden_size));
    model.forward(tokens, cache, LogitsFor::None, nullptr, hidden.data());
    model.draft(0, std::span(tokens).subspan(1), 0, cache, hidden.data(), LogitsFor::AllTokens, logits.data());
    write_npy_f32(options->out, logits.data(), {n_tokens - 1, vocab});
  });
}

}  // namespace deepmoe::cli
