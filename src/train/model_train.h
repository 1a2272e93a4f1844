// One training step's forward and backward over a batch of sequences: embedding, layers (RMSNorm
// → MLA → residual → RMSNorm → MLP or MoE → residual), final norm, lm_head (tied or not), mean
// token cross-entropy plus aux_weight × the MoE balance loss. Gradients accumulate into
// Parameters::grads(), so several calls make gradient accumulation.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "core/thread_pool.h"
#include "model/rope.h"
#include "train/mla_train.h"
#include "train/moe_train.h"
#include "train/parameters.h"

namespace deepmoe::train {

struct StepLoss {
  double loss = 0;           // cross_entropy + aux_weight * balance
  double cross_entropy = 0;  // mean over batch * seq targets
  double balance = 0;        // Σ over MoE layers of the batch-mean sequence-wise balance loss
  std::vector<std::vector<int32_t>> expert_counts;  // per MoE layer (in layer order): selections per expert
};

class TrainGraph {
 public:
  // n_threads: the pool every layer splits its work over (BLAS runs one thread per block).
  TrainGraph(const Config& config, int n_threads);
  ~TrainGraph();

  // inputs, targets: [batch * seq] token ids. With backward, adds `grad_scale` × d loss into
  // p.grads() (grad_scale = 1 / accumulation steps). Throws Error for an id outside the vocabulary.
  StepLoss run(Parameters& p, std::span<const int32_t> inputs, std::span<const int32_t> targets, int64_t batch,
               int64_t seq, double aux_weight, bool backward, float grad_scale = 1.0f);

 private:
  struct LayerSaved {
    std::vector<float> x_in, inv_rms1, normed1, h, inv_rms2, normed2;
    MlaSaved mla;
    MoeSaved moe;
    MlpSaved mlp;
  };
  Config config_;
  ThreadPool pool_;
  RopeTable rope_;
  int64_t rope_positions_ = 0;
  std::vector<LayerSaved> layers_;
  std::vector<float> final_in_, final_inv_rms_, final_normed_, logits_;
};

}  // namespace deepmoe::train
