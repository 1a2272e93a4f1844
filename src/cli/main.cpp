// deepmoe: one binary, one file per subcommand. Errors print one line and exit non-zero.
#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>

#include "cli/common.h"

int main(int argc, char** argv) {
  CLI::App app{"deepmoe: DeepSeek-architecture Mixture-of-Experts engine"};
  app.require_subcommand(1);
  // One line per error, like every other error of ours (CLI11's default adds a second line).
  app.failure_message(
      [](const CLI::App*, const CLI::Error& e) { return fmt::format("deepmoe: error: {} (see --help)\n", e.what()); });
  deepmoe::cli::add_info_command(app);
  deepmoe::cli::add_init_command(app);
  deepmoe::cli::add_logits_command(app);
  deepmoe::cli::add_generate_command(app);
  deepmoe::cli::add_bench_command(app);
  deepmoe::cli::add_tokenize_command(app);
  deepmoe::cli::add_detokenize_command(app);
  deepmoe::cli::add_chat_template_command(app);
  deepmoe::cli::add_tokenizer_train_command(app);
  deepmoe::cli::add_chat_command(app);
  deepmoe::cli::add_prepare_command(app);
  deepmoe::cli::add_convert_command(app);
  deepmoe::cli::add_ppl_command(app);
  deepmoe::cli::add_eval_command(app);
  deepmoe::cli::add_quantize_command(app);
  deepmoe::cli::add_serve_command(app);
  deepmoe::cli::add_train_command(app);
  deepmoe::cli::add_sft_command(app);
  deepmoe::cli::add_dpo_command(app);
  deepmoe::cli::add_fisher_command(app);
  deepmoe::cli::add_grpo_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    fmt::print(stderr, "deepmoe: error: {}\n", e.what());
    return 1;
  }
  return 0;
}
