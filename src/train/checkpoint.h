// Training checkpoints that survive anything: OUT/checkpoints/step-N holds the weights
// (model.safetensors, HF names, F32, loadable by every command), the optimizer moments
// (optimizer.safetensors), config.json and state.json (step, optimizer steps, the run's
// settings, and an XXH64 checksum of each other file). Each is written into step-N.partial,
// flushed, and swapped into place, so a kill or a full disk mid-save leaves the previous
// checkpoint as it was, and there is never a moment without a complete step-N when step N is
// saved again. A resume verifies the checksums and the config before it uses a checkpoint.
#pragma once
#include <nlohmann/json.hpp>

#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "train/optimizer.h"
#include "train/parameters.h"

namespace deepmoe::train {

// Called with "before swap" and "after swap" around the moment a finished step-N.partial
// replaces an existing step-N: a test throws from it to stand in for a crash there.
using SaveMoment = std::function<void(const std::string& moment)>;

// Saves step `step` (the number of optimizer steps done) and then deletes all but the newest
// `keep_last` checkpoints. Throws Error (the previous checkpoints untouched) when it cannot.
void save_checkpoint(const std::string& out_dir, int64_t step, const Parameters& p, const Optimizer& optimizer,
                     const nlohmann::json& state, int64_t keep_last, const SaveMoment& at_moment = {});

// Restores weights and optimizer moments from one checkpoint directory; returns state.json.
// Verifies first (the checksums of its files, then that its config is p's config), so on Error
// p and optimizer are untouched. Throws ConfigMismatch (an Error) when the checkpoint is of
// another model, Error naming the file for anything else.
nlohmann::json load_checkpoint(const std::string& dir, Parameters& p, Optimizer& optimizer);

class ConfigMismatch : public Error {
 public:
  using Error::Error;
};

struct ResumedCheckpoint {
  std::string dir;
  nlohmann::json state;
  // Newer checkpoints that failed verification, newest first: the directory and why.
  std::vector<std::pair<std::string, std::string>> skipped;
};

// Restores the newest checkpoint under out_dir/checkpoints that verifies; newer ones that do
// not (a corrupt or truncated file) are skipped and listed. Throws Error when there is no
// checkpoint or none verifies (one line, naming each and why), and ConfigMismatch at once when a
// checkpoint is of another model: an older one of the same run would not be either.
ResumedCheckpoint resume_newest_good(const std::string& out_dir, Parameters& p, Optimizer& optimizer);

}  // namespace deepmoe::train
