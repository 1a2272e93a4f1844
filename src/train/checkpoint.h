// Training checkpoints that survive anything: OUT/checkpoints/step-N holds the weights
// (model.safetensors, or under expert parallelism one shard per expert block with
// model.safetensors.index.json: HF names, F32, loadable by every command), the optimizer moments
// (optimizer.safetensors, or one file per rank of a multi-process run, each holding that rank's
// shards), config.json and state.json (step, optimizer steps, the run's settings, the optimizer
// files, and an XXH64 checksum of each other file). Everything is written into step-N.partial
// (every rank writes its own files there: OUT is on a filesystem all ranks share), flushed, and
// swapped into place by rank 0, so a kill or a full disk mid-save leaves the previous checkpoint
// as it was, and there is never a moment without a complete step-N when step N is saved again. A
// resume verifies the checksums and the config before it uses a checkpoint.
//
// Moments are stored per tensor: "<parameter>.exp_avg" / ".exp_avg_sq" for a whole tensor, and
// "<parameter>.exp_avg@<first element>" for the piece of it in one rank's shard. Pieces are named
// in the tensor's own elements, not the flat buffer's, so any layout (world size, expert
// parallelism) reassembles them.
#pragma once
#include <nlohmann/json.hpp>

#include <functional>
#include <span>
#include <string>
#include <vector>

#include "core/error.h"
#include "dist/shards.h"
#include "train/optimizer.h"
#include "train/parameters.h"

namespace deepmoe::train {

// Called with "before swap" and "after swap" around the moment a finished step-N.partial
// replaces an existing step-N: a test throws from it to stand in for a crash there.
using SaveMoment = std::function<void(const std::string& moment)>;

// Saves step `step` (the number of optimizer steps done) of one process and then deletes all but
// the newest `keep_last` checkpoints. Throws Error (the previous checkpoints untouched) when it
// cannot. A multi-process save uses the steps below.
void save_checkpoint(const std::string& out_dir, int64_t step, const Parameters& p, const Optimizer& optimizer,
                     const nlohmann::json& state, int64_t keep_last, const SaveMoment& at_moment = {});

// The steps of a save that several ranks share. Rank 0 calls begin_checkpoint (an empty
// step-N.partial); then, after a barrier, every rank writes its files into that directory and
// returns their checksums (checksums_of); rank 0 gathers them and calls finish_checkpoint.
std::string partial_checkpoint_dir(const std::string& out_dir, int64_t step);
// The file rank `rank` of `ranks` writes its optimizer shards to (one process: optimizer.safetensors).
std::string optimizer_file_of(int rank, int ranks);
void begin_checkpoint(const std::string& out_dir, int64_t step);
// For an error while writing the files: removes step-N.partial and throws Error naming the
// checkpoint and why, saying the previous checkpoints are kept.
[[noreturn]] void abandon_checkpoint(const std::string& out_dir, int64_t step, const std::exception& why);
nlohmann::json checksums_of(const std::string& dir, const std::vector<std::string>& files);
// Writes state.json (state plus `checksums`, one object of file name -> digest), flushes the
// directory, swaps it into place as step-N and keeps the newest keep_last. On Error the partial
// directory is removed and the previous checkpoints stay.
void finish_checkpoint(const std::string& out_dir, int64_t step, nlohmann::json state, const nlohmann::json& checksums,
                       int64_t keep_last, const SaveMoment& at_moment = {});

// A rank's shard of the optimizer state: elements [shard.begin, shard.end) of p's flat buffer.
struct MomentShard {
  dist::Shard shard;
  std::span<const float> first, second;  // second empty for Lion
};
// One file of moments for the tensors (or pieces of them) in `shards`, atomically.
void write_moments(const std::string& path, const Parameters& p, std::span<const MomentShard> shards);

// Restores weights and optimizer moments from one checkpoint directory; returns state.json.
// Reads the tensors p holds (a rank's expert block under expert parallelism) from however many
// files the checkpoint was written as. Verifies first (the checksums of its files, then that its
// config is p's config, then that every moment p needs is there whole), so on Error p and
// optimizer are untouched. Throws ConfigMismatch (an Error) when the checkpoint is of
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
