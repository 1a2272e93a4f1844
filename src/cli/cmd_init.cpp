#include "cli/common.h"
#include "core/error.h"
#include "model/random_init.h"

namespace deepmoe::cli {

void add_init_command(CLI::App& app) {
  struct Options {
    std::string config, out, dtype = "f32";
    uint64_t seed = 0;
  };
  auto options = std::make_shared<Options>();
  auto* command = app.add_subcommand("init", "Write a seeded random checkpoint in HuggingFace format");
  command->add_option("--config", options->config, "config.json with DeepSeek-V2/V3 fields")->required();
  command->add_option("--out", options->out, "output model directory")->required();
  command->add_option("--seed", options->seed, "random seed");
  command->add_option("--dtype", options->dtype, "f32 or bf16")->check(CLI::IsMember({"f32", "bf16"}));
  command->callback([options] {
    write_random_checkpoint(options->config, options->out, options->seed,
                            options->dtype == "bf16" ? DType::BF16 : DType::F32);
    fmt::print("wrote {}\n", options->out);
  });
}

}  // namespace deepmoe::cli
