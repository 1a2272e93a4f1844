// Optimizers over the flat parameter buffer (PyTorch's semantics, so runs can be compared with
// torch.optim), the learning-rate schedules, and global-norm gradient clipping.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "train/parameters.h"

namespace deepmoe::train {

enum class OptimizerKind { AdamW, Lion };
enum class Schedule { Constant, Cosine, Wsd };

struct OptimizerOptions {
  OptimizerKind kind = OptimizerKind::AdamW;
  double beta1 = 0.9, beta2 = 0.999;  // Lion's defaults are 0.9 / 0.99 (set by the CLI)
  double eps = 1e-8;
  double weight_decay = 0.0;
};

class Optimizer {
 public:
  Optimizer(const Parameters& p, OptimizerOptions options);
  // One update with learning rate lr from p.grads() (trainable tensors only; decoupled weight
  // decay on every one of them). AdamW: torch.optim.AdamW. Lion: p -= lr·(sign(β1·m + (1-β1)·g)
  // + wd·p), then m = β2·m + (1-β2)·g, with sign(0) = 0.
  void step(ThreadPool& pool, Parameters& p, double lr);
  int64_t steps_taken() const { return steps_; }
  std::vector<float>& first_moment() { return m_; }
  std::vector<float>& second_moment() { return v_; }  // empty for Lion
  const std::vector<float>& first_moment() const { return m_; }
  const std::vector<float>& second_moment() const { return v_; }
  void set_steps_taken(int64_t steps) { steps_ = steps; }

 private:
  OptimizerOptions options_;
  std::vector<float> m_, v_;
  std::vector<std::pair<size_t, size_t>> ranges_;  // [offset, offset + size) of trainable tensors
  int64_t steps_ = 0;
};

struct ScheduleOptions {
  Schedule kind = Schedule::Constant;
  double lr = 1e-3, min_lr = 0.0;
  int64_t warmup = 0, total_steps = 1;
  double decay_fraction = 0.2;  // WSD: the last 20 % of steps decay linearly to min_lr
};
// The learning rate of step `step` (0-based): linear warmup from lr/warmup to lr over `warmup`
// steps, then constant, cosine to min_lr, or warmup-stable-decay.
double learning_rate(const ScheduleOptions& s, int64_t step);

// Global L2 norm of the trainable gradients; when max_norm > 0 and the norm exceeds it, scales
// them by max_norm / (norm + 1e-6) as torch.nn.utils.clip_grad_norm_. Returns the norm before.
double clip_gradients(ThreadPool& pool, Parameters& p, double max_norm);

}  // namespace deepmoe::train
