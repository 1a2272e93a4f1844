// Optimizers over the flat parameter buffer (PyTorch's semantics, so runs can be compared with
// torch.optim), the learning-rate schedules, and global-norm gradient clipping.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "dist/shards.h"
#include "train/parameters.h"

namespace deepmoe::train {

enum class OptimizerKind { AdamW, Lion };
enum class Schedule { Constant, Cosine, Wsd, Plateau };

struct OptimizerOptions {
  OptimizerKind kind = OptimizerKind::AdamW;
  double beta1 = 0.9, beta2 = 0.999;  // Lion's defaults are 0.9 / 0.99 (set by the CLI)
  double eps = 1e-8;
  double weight_decay = 0.0;
};

// The state of one shard of the flat parameter buffer (ZeRO-1: each data-parallel rank keeps only
// its shard's moments), or of the whole buffer.
class Optimizer {
 public:
  Optimizer(const Parameters& p, OptimizerOptions options);  // the whole buffer
  Optimizer(const Parameters& p, OptimizerOptions options, dist::Shard shard);
  // One update with learning rate lr of the shard's values in p from `grads` (the shard's
  // gradients: element i is parameter shard().begin + i), trainable tensors only, with decoupled
  // weight decay on every one of them. AdamW: torch.optim.AdamW. Lion: p -= lr·(sign(β1·m +
  // (1-β1)·g) + wd·p), then m = β2·m + (1-β2)·g, with sign(0) = 0.
  void step(ThreadPool& pool, Parameters& p, std::span<const float> grads, double lr);
  // The same from p.grads().
  void step(ThreadPool& pool, Parameters& p, double lr);
  int64_t steps_taken() const { return steps_; }
  const dist::Shard& shard() const { return shard_; }
  // The shard's moments (element i: parameter shard().begin + i).
  std::vector<float>& first_moment() { return m_; }
  std::vector<float>& second_moment() { return v_; }  // empty for Lion
  const std::vector<float>& first_moment() const { return m_; }
  const std::vector<float>& second_moment() const { return v_; }
  void set_steps_taken(int64_t steps) { steps_ = steps; }
  // Takes this shard's part of a whole-buffer optimizer's state and its step count (a resume
  // from a checkpoint saved at any number of ranks).
  void copy_shard_from(const Optimizer& whole);

 private:
  OptimizerOptions options_;
  dist::Shard shard_;
  std::vector<float> m_, v_;
  // [begin, end) of trainable tensors within the shard, in flat-buffer elements, cut into chunks
  std::vector<std::pair<size_t, size_t>> ranges_;
  int64_t steps_ = 0;
};

struct ScheduleOptions {
  Schedule kind = Schedule::Constant;
  double lr = 1e-3, min_lr = 0.0;
  int64_t warmup = 0, total_steps = 1;
  double decay_fraction = 0.2;  // WSD: the last 20 % of steps decay linearly to min_lr
  // Plateau: after the warmup, lr × factor^cuts (not below min_lr), a cut each time the
  // validation loss has not improved for more than `patience` evaluations (ReducePlateau).
  double plateau_factor = 0.5;
  int64_t plateau_patience = 2;
};

// Reduce-on-plateau's state, as torch.optim.lr_scheduler.ReduceLROnPlateau keeps it (mode min,
// relative threshold 1e-4, no cooldown): the best validation loss, evaluations since it, cuts so far.
struct ReducePlateau {
  double best = 0;
  bool seen = false;
  int64_t bad = 0, cuts = 0;
  // After an evaluation: true when the learning rate is cut.
  bool observe(double val_loss, int64_t patience);
};
// The learning rate of step `step` (0-based): linear warmup from lr/warmup to lr over `warmup`
// steps, then constant, cosine to min_lr, or warmup-stable-decay.
double learning_rate(const ScheduleOptions& s, int64_t step, const ReducePlateau& plateau = {});

// Global L2 norm of the trainable gradients; when max_norm > 0 and the norm exceeds it, scales
// them by max_norm / (norm + 1e-6) as torch.nn.utils.clip_grad_norm_. Returns the norm before.
double clip_gradients(ThreadPool& pool, Parameters& p, double max_norm);
// The same in parts, for gradients sharded over ranks (grads: the shard's, element i is
// parameter shard.begin + i): each rank's sum of squares over its trainable elements (in a fixed
// chunk order, so the sum is the same for any thread count), the sum of those over the ranks
// gives the norm, and every rank scales its shard by the same clip_coefficient.
double squared_gradient_norm(ThreadPool& pool, const Parameters& p, dist::Shard shard, std::span<const float> grads);
double clip_coefficient(double norm, double max_norm);  // 1 when no clipping is due
void scale_gradients(ThreadPool& pool, const Parameters& p, dist::Shard shard, std::span<float> grads,
                     double coefficient);

}  // namespace deepmoe::train
