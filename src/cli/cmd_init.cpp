#include "cli/common.h"
#include "core/error.h"
#include "model/config.h"
#include "model/random_init.h"
#include "tokenizer/tokenizer.h"

namespace deepmoe::cli {

void add_init_command(CLI::App& app) {
  struct Options {
    std::string config, out, dtype = "f32", tokenizer;
    uint64_t seed = 0;
  };
  auto options = std::make_shared<Options>();
  auto* command = app.add_subcommand("init", "Write a seeded random checkpoint in HuggingFace format");
  command->add_option("--config", options->config, "config.json with DeepSeek-V2/V3 fields")->required();
  command->add_option("--out", options->out, "output model directory")->required();
  command->add_option("--seed", options->seed, "random seed");
  command->add_option("--dtype", options->dtype, "f32 or bf16")->check(CLI::IsMember({"f32", "bf16"}));
  command->add_option("--tokenizer", options->tokenizer,
                      "copy this tokenizer (directory or tokenizer.json) into the model");
  command->callback([options] {
    if (!options->tokenizer.empty()) {  // checked before anything is written
      const int64_t vocab = load_config(options->config).vocab_size;
      const int32_t ids = load_tokenizer(options->tokenizer)->id_limit();
      if (ids > vocab)
        fail("{}: the tokenizer has ids up to {} but the model's vocab_size is {}", options->tokenizer, ids - 1, vocab);
    }
    write_random_checkpoint(options->config, options->out, options->seed,
                            options->dtype == "bf16" ? DType::BF16 : DType::F32);
    if (!options->tokenizer.empty()) copy_tokenizer_files(options->tokenizer, options->out);
    fmt::print("wrote {}\n", options->out);
  });
}

}  // namespace deepmoe::cli
