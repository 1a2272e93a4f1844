// One training step's forward and backward over a batch of sequences: the model's own layers
// (model/decoder.h, model/embedding.h) run over views of the trainer's flat parameters and
// gradients, keeping what backward needs; the loss is the mean token cross-entropy plus
// aux_weight × the MoE balance loss. Gradients accumulate into Parameters::grads(), so several
// calls make gradient accumulation.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "core/activation_slab.h"
#include "kernels/context.h"
#include "model/decoder.h"
#include "model/rope.h"
#include "model/weights.h"
#include "train/parameters.h"

namespace deepmoe::train {

struct StepLoss {
  double loss = 0;               // cross_entropy + aux_weight * balance
  double cross_entropy = 0;      // mean over batch * seq targets
  double balance = 0;            // Σ over MoE layers of the batch-mean sequence-wise balance loss
  double mtp_cross_entropy = 0;  // the MTP loss before its weight: the mean over depths of each depth's mean CE
  std::vector<std::vector<int32_t>> expert_counts;  // per MoE layer (in layer order): selections per expert
};

// Called during backward each time a range [begin, end) of the flat gradient buffer holds its
// final value for the run: the final norm and head, then each layer from the last to the first
// (an MoE layer's routed experts, in the expert region, then its dense tensors), then the
// embedding; together the ranges cover the buffer once, and none spans both regions. Data parallelism starts
// reducing a range there, while the earlier layers' backward still runs.
using GradientsReady = std::function<void(size_t begin, size_t end)>;

// The loss over a micro-batch's tokens as a function of their targets' log-probabilities
// log p(target_r | the row's tokens before it), r over batch * seq: it returns the loss and writes
// d loss / d log p(target_r) into `gradient` (zero for tokens it ignores). Pretraining's mean
// cross-entropy is -mean(log p), each gradient -1/n; SFT masks, DPO and GRPO weigh sequences.
using TokenObjective = std::function<double(std::span<const double> logprobs, std::span<double> gradient)>;

// Pretraining's objective: the mean cross-entropy over every token.
double mean_cross_entropy(std::span<const double> logprobs, std::span<double> gradient);

class TrainGraph {
 public:
  // n_threads: the pool every layer splits its work over (BLAS runs one thread per block).
  // precision: the linear layers' GEMM operands (BF16 needs cpu_has_bf16_gemm()).
  // recompute: keep only each layer's input through the forward pass and recompute the layer's
  // activations just before its backward (one layer's activations live at a time; the losses
  // and gradients are bit-identical, the forward runs twice).
  // expert_group: the routed experts are spread over its ranks (expert parallelism; the
  // Parameters then hold this rank's share of them); null: all on this rank. Not owned.
  // bf16_kept_by_caller (BF16 only): run() uses the bf16 copy of the weights as the caller last
  // left it through refresh_bf16 and bf16_weights(), instead of converting all the values again
  // (ZeRO-1 keeps only a shard of the f32 values and all-gathers the bf16 copy).
  TrainGraph(const Config& config, int n_threads, GemmPrecision precision = GemmPrecision::F32, bool recompute = false,
             ExpertGroup* expert_group = nullptr, bool bf16_kept_by_caller = false);

  // inputs, targets: [batch * seq] token ids. The loss is objective's over the targets'
  // log-probabilities (mean_cross_entropy when empty; StepLoss::cross_entropy holds its value)
  // plus aux_weight × the balance loss. With backward, adds `grad_scale` × d objective +
  // aux_weight × d balance into p.grads() (each weighted by its part of the step: the objective's
  // by what it needs, 1 / accumulation steps for a mean; the balance by the share of the step's
  // sequences, which the caller puts in aux_weight) and calls `ready` as ranges of it are done. `logprobs`
  // (when not null) receives the targets' log-probabilities. Throws Error for an id outside the
  // vocabulary.
  StepLoss run(Parameters& p, std::span<const int32_t> inputs, std::span<const int32_t> targets, int64_t batch,
               int64_t seq, double aux_weight, bool backward, float grad_scale = 1.0f, const GradientsReady& ready = {},
               const TokenObjective& objective = {}, std::vector<double>* logprobs = nullptr);

  // The bf16 copy of p's values (BF16 precision): [begin, end) converted again from p's values,
  // and the whole copy, laid out as p's flat buffer.
  void refresh_bf16(const Parameters& p, size_t begin, size_t end);
  std::span<uint16_t> bf16_weights() { return bf16_bits_; }

  // DeepSeek-V3's multi-token-prediction loss (§2.2): with weight λ > 0 and no objective (pretraining),
  // run() adds λ × the mean over the config's MTP modules (depth k = module k − 1) of the mean
  // cross-entropy of predicting token i + k + 1 from position i, and its gradients (scaled by
  // grad_scale like the main loss's). Modules the run does not train stay untouched (0, the default).
  void set_mtp_weight(double weight) { mtp_weight_ = weight; }

  // Bytes held by the saved activations now (after a run: the step's activation memory).
  size_t activation_bytes() const;
  // The graph's context: its pool serves the optimizer step too.
  const Context& context() const { return context_; }

 private:
  // Points the weight views at p's buffers (again, when they moved) and refreshes the bf16 copy.
  void bind(const Parameters& p);
  DecoderSaved take_layer(int64_t layer, ActivationSlab& slab, int64_t batch, int64_t seq) const;

  // One MTP depth's forward state (slab spans), kept for its backward.
  struct MtpDepth {
    int64_t seq = 0, rows = 0;                    // positions per sequence (seq − depth), batch · seq
    std::vector<int32_t> next, targets;           // t_{i+k} embedded, t_{i+k+1} predicted, per row
    std::span<float> h_in, joined, inv_rms;       // the previous depth's hidden rows, eh_proj's input, 2 norms
    DecoderSaved block;                           // its decoder layer
    std::span<float> y, head_inv_rms, z, logits;  // block output, shared_head.norm of it, logits
    std::vector<double> sums, gradient;           // softmax sums; d loss / d log p(target)
  };
  // The MTP depths' forward (after the main head; hidden: the main rows after the final norm) and
  // their loss into `result`; then their backward, which returns ∂loss/∂hidden for the main head.
  void mtp_forward(const ModelWeights& forward_weights, std::span<const int32_t> targets, int64_t batch, int64_t seq,
                   StepLoss& result);
  std::vector<float> mtp_backward(const ModelWeights& forward_weights, int64_t batch, int64_t seq, double aux_weight,
                                  float grad_scale);

  Config config_;
  Context context_;
  bool recompute_;
  ExpertGroup* expert_group_;
  bool bf16_kept_by_caller_;
  RopeTable rope_;
  std::vector<int64_t> positions_;
  // Views of the parameters: values (f32), their bf16 copy (the forward weights in bf16 precision;
  // norms stay f32), and the gradients.
  std::unique_ptr<ModelWeights> values_, grads_, bf16_;
  const float *bound_values_ = nullptr, *bound_grads_ = nullptr;
  const uint16_t* bound_bf16_ = nullptr;
  std::vector<uint16_t> bf16_bits_;
  // Activation memory: slab_ holds the step's saved tensors; with recompute_, layer_slab_ holds
  // one layer's at a time (rewound for each layer) and slab_ only the layers' inputs.
  ActivationSlab slab_, layer_slab_;
  std::vector<DecoderSaved> layers_;            // one per layer, or one reused by all with recompute_
  std::vector<std::span<float>> layer_inputs_;  // recompute_ only: each layer's input
  std::span<float> final_in_, final_inv_rms_, final_normed_, logits_;
  DecoderScratch scratch_;
  double mtp_weight_ = 0;
  std::vector<MtpDepth> mtp_;
  std::vector<RopeTable> mtp_rope_;  // per depth: positions r % (seq − depth)
  std::vector<int64_t> mtp_rope_rows_;
};

}  // namespace deepmoe::train
