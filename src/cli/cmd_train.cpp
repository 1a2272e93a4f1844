// deepmoe train: pretraining (and continued pretraining) on token files; the flags and the run
// are the training commands' shared part (training_run.h).
#include "cli/common.h"
#include "cli/training_run.h"
#include "core/error.h"

namespace deepmoe::cli {

void add_train_command(CLI::App& app) {
  auto flags = std::make_shared<TrainFlags>();
  train::TrainerOptions* o = &flags->trainer;
  auto* command = app.add_subcommand("train", "Train a DeepSeek-architecture model on a token file");
  auto* init = command->add_option("--init", o->init_dir, "start from this HF model directory");
  auto* config = command->add_option("--config", o->config_path, "start from a random model of this config.json");
  init->excludes(config);
  command
      ->add_option("--data", o->data_path,
                   "training tokens (uint32 file), or a mixture: a.u32:0.7,b.u32:0.3 (windows drawn by weight)")
      ->required();
  command->add_option("--val-data", o->val_data_path, "validation tokens (uint32 file)");
  command->add_option("--order", flags->order, "random or sequential windows")
      ->check(CLI::IsMember({"random", "sequential"}));
  command->add_option("--mtp-depth", o->mtp_depth,
                      "train D multi-token-prediction modules (DeepSeek-V3's MTP; added when the model lacks them)");
  command->add_option("--mtp-weight", o->mtp_weight, "weight of the MTP loss (mean over depths)")
      ->capture_default_str();
  add_common_training_flags(command, *flags);
  command->callback([flags, init, config] {
    if (!*init && !*config) fail("train needs --init DIR or --config FILE.json");
    run_training(*flags);
  });
}

}  // namespace deepmoe::cli
