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
#include "train/layers.h"
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
  // precision: the linear layers' GEMM operands (BF16 needs cpu_has_bf16_gemm()).
  // recompute: keep only each layer's input through the forward pass and recompute the layer's
  // activations just before its backward (one layer's activations live at a time; the losses
  // and gradients are bit-identical, the forward runs twice).
  TrainGraph(const Config& config, int n_threads, GemmPrecision precision = GemmPrecision::F32,
             bool recompute = false);
  ~TrainGraph();

  // inputs, targets: [batch * seq] token ids. With backward, adds `grad_scale` × d loss into
  // p.grads() (grad_scale = 1 / accumulation steps). Throws Error for an id outside the vocabulary.
  StepLoss run(Parameters& p, std::span<const int32_t> inputs, std::span<const int32_t> targets, int64_t batch,
               int64_t seq, double aux_weight, bool backward, float grad_scale = 1.0f);

  // Bytes held by the saved activations now (after a run: the step's activation memory).
  size_t activation_bytes() const;

 private:
  struct LayerSaved {
    std::span<float> x_in, inv_rms1, normed1, h, inv_rms2, normed2;
    MlaSaved mla;
    MoeSaved moe;
    MlpSaved mlp;
  };
  // x (layer l's input) becomes its output; s receives what backward_layer needs. result, when
  // given, collects the MoE balance loss and expert counts.
  void forward_layer(Parameters& p, int64_t l, int64_t batch, int64_t seq, std::vector<float>& x,
                     ActivationSlab& slab, LayerSaved& s, StepLoss* result);
  // dx: d loss / d layer output on entry, d loss / d layer input on return.
  void backward_layer(Parameters& p, int64_t l, int64_t batch, int64_t seq, double aux_scale, LayerSaved& s,
                      std::vector<float>& dx);
  Config config_;
  ThreadPool pool_;
  GemmPrecision precision_;
  Bf16Weights bf16_weights_;
  bool recompute_;
  RopeTable rope_;
  int64_t rope_positions_ = 0;
  // Activation memory: slab_ holds the step's saved tensors; with recompute_, layer_slab_ holds
  // one layer's at a time (rewound for each layer) and slab_ only the layers' inputs.
  ActivationSlab slab_, layer_slab_;
  std::vector<LayerSaved> layers_;                // one per layer, or one reused by all with recompute_
  std::vector<std::span<float>> layer_inputs_;    // recompute_ only: each layer's input
  std::span<float> final_in_, final_inv_rms_, final_normed_, logits_;
};

}  // namespace deepmoe::train
