// The training commands' shared part (train, sft, and the later stages): the flags that fill
// train::TrainerOptions, and the run itself: the world line, a progress line or a line per step,
// the summary. Under mpirun every rank runs it; rank 0 prints.
#pragma once
#include <CLI/CLI.hpp>

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "train/trainer.h"

namespace deepmoe::cli {

// The flags: most are the Trainer's options themselves; these are words and defaults to resolve.
struct TrainFlags {
  train::TrainerOptions trainer;
  std::string schedule = "constant", optimizer = "adamw", order = "random", precision = "f32",
              grad_compression = "none", comm_overlap = "on";
  std::optional<double> beta1, beta2;
  int threads = 0;
};

// Every flag but what the data is (--data, --val-data, --order) and where the model starts
// (--init, --config).
void add_common_training_flags(CLI::App* command, TrainFlags& flags);

// What a command trains on, made once the options are final (null: pretraining's token windows).
using DataFactory = std::function<std::unique_ptr<train::TrainingData>(const train::TrainerOptions&)>;

// This process's place in its mpirun job (rank 0 of 1 when run alone), from mpirun's environment:
// a data factory runs on every rank before the trainer's communicator exists.
struct LaunchedRank {
  int rank = 0, size = 1;
};
LaunchedRank launched_rank();
// Whether this process is rank 0 of its mpirun job (or the only one): only the first says what a
// data factory loaded.
bool is_first_rank();

// DPO's and GRPO's reference model directory (`reference`, empty: the starting model itself):
// throws Error unless its vocabulary is the trained model's, since π_ref scores the same token ids.
std::string reference_model_dir(const std::string& reference, const std::string& init_dir);

// Resolves the flags, trains, prints. Errors as one line (on every rank under mpirun).
void run_training(const TrainFlags& flags, const DataFactory& data = {});

}  // namespace deepmoe::cli
