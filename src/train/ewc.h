// Elastic weight consolidation (Kirkpatrick et al. 2017) against forgetting in continued training:
// `deepmoe fisher` estimates the diagonal Fisher information of a trained model on its old data,
// F_i = the mean over sequences of (d loss_seq / d θ_i)², loss_seq a sequence's mean cross-entropy;
// training with --ewc then adds λ/2 Σ F_i (θ_i − θ*_i)² to the loss, θ* the model F was taken at.
// The directory F holds two HF directories of the model's tensor names: anchor/ (θ*) and fisher/ (F).
#pragma once
#include <cstdint>
#include <span>
#include <string>

#include "dist/shards.h"
#include "train/parameters.h"

namespace deepmoe::train {

struct FisherOptions {
  std::string model_dir, data_path, out_dir;
  int64_t seq = 128, samples = 64;  // sequences averaged over (sequential windows of the data)
  int threads = 1;
};

// Writes out_dir/anchor and out_dir/fisher. Throws Error on bad files or options.
void compute_fisher(const FisherOptions& options);

// The penalty over a rank's shards of the flat parameters: anchor and Fisher laid out as the
// trainer's Parameters (the same config and expert share).
class ElasticPenalty {
 public:
  // Throws Error when `dir` does not hold anchor/ and fisher/ of the same model as `like`.
  ElasticPenalty(const std::string& dir, const Parameters& like, double lambda);
  // Adds λ F (θ − θ*) to the shard's gradients (flat offsets `shard`, gradients `grads`), and
  // returns the shard's part of λ/2 Σ F (θ − θ*)².
  double add_to(const Parameters& p, dist::Shard shard, std::span<float> grads) const;

 private:
  Parameters anchor_, fisher_;
  double lambda_;
};

}  // namespace deepmoe::train
