// deepmoe fisher: the diagonal Fisher information of a model on token data (train/ewc.h), for
// --ewc in later training against forgetting what that data taught.
#include <chrono>

#include "cli/common.h"
#include "core/error.h"
#include "train/ewc.h"

namespace deepmoe::cli {

void add_fisher_command(CLI::App& app) {
  auto o = std::make_shared<train::FisherOptions>();
  auto threads = std::make_shared<int>(0);
  auto* command = app.add_subcommand(
      "fisher", "Diagonal Fisher information of a model on token data (for --ewc in continued training)");
  command->add_option("--model", o->model_dir, "the trained model directory")->required();
  command->add_option("--data", o->data_path, "the data it learned (uint32 tokens; sequential windows)")->required();
  command->add_option("--out", o->out_dir, "output directory (anchor/ and fisher/)")->required();
  command->add_option("--seq", o->seq, "tokens per sequence (default 128)")->check(CLI::PositiveNumber);
  command->add_option("--samples", o->samples, "sequences averaged over (default 64)")->check(CLI::PositiveNumber);
  command->add_option("--threads", *threads, "threads (0: all cores)");
  command->callback([o, threads] {
    o->threads = resolve_threads(*threads);
    const auto start = std::chrono::steady_clock::now();
    train::compute_fisher(*o);
    fmt::print("fisher: {} sequences of {} tokens in {:.1f} s -> {}\n", o->samples, o->seq,
               std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), o->out_dir);
  });
}

}  // namespace deepmoe::cli
