// A training run as a library: batches of token windows, gradient accumulation, clipping, the
// optimizer step on a learning-rate schedule, V3's balance-bias update, validation, checkpoints
// (every N steps, the last K kept, exact resume), OUT/metrics.jsonl with its plots, and the final
// model in OUT. It prints nothing: each step is handed to the caller as a StepReport.
//
// Over the ranks of a communicator (mpirun), it trains data parallel with ZeRO-1 (DataParallel):
// each step's global batch of batch × grad_accum windows is cut into one contiguous share per
// rank, the gradients are summed by reduce-scatter into each rank's shard of the optimizer
// state, and the loss, gradient norm, expert loads and validation loss are summed over the ranks
// so that every rank takes the same decisions. Rank 0 alone writes files.
//
// With expert parallelism (expert_parallel E > 1), consecutive groups of E ranks split each MoE
// layer's routed experts between them (rank r holds block r mod E), and tokens travel to their
// experts' ranks and back (ExpertExchange); the dense region of the parameters is reduced over all
// ranks and the expert region over the ranks holding the same block. Checkpoints and the final
// model are whole (every expert, gathered on rank 0), so any world size and any E resume them.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "dist/communicator.h"
#include "io/token_windows.h"
#include "train/checkpoint.h"
#include "train/data_parallel.h"
#include "train/ewc.h"
#include "train/expert_balance.h"
#include "train/expert_exchange.h"
#include "train/model_train.h"
#include "train/optimizer.h"
#include "train/parameters.h"
#include "train/training_data.h"

namespace deepmoe::train {

struct TrainerOptions {
  // The model to start from: an HF directory, or a config.json whose seeded random model is
  // written to out_dir/initial. Exactly one of the two.
  std::string init_dir, config_path;
  std::string data_path;       // training tokens (uint32 file), unless the Trainer is given its data
  std::string val_data_path;   // validation tokens; empty: no validation
  std::string out_dir;         // metrics.jsonl, plots, checkpoints/ and the trained model
  std::string dump_grads_dir;  // where step 0's unclipped gradients go; empty: nowhere
  int64_t seq = 128, batch = 8, grad_accum = 1, steps = 100;
  WindowOrder order = WindowOrder::Random;
  uint64_t seed = 0;  // the windows' stream and the random model's weights
  Schedule schedule = Schedule::Constant;
  double lr = 1e-3, min_lr = 0.0;
  int64_t warmup = 0;
  // Schedule::Plateau: the cut, and the evaluations without improvement before one.
  double plateau_factor = 0.5;
  int64_t plateau_patience = 2;
  // `deepmoe fisher`'s output: adds ewc_lambda / 2 Σ F (θ − θ*)² to the loss (empty: off).
  std::string ewc_dir;
  double ewc_lambda = 0;
  OptimizerOptions optimizer;  // its betas as they are: Lion's defaults are the caller's to set
  double clip = 1.0;           // global gradient-norm limit (0: off)
  double aux_loss = 0.0;       // weight of the sequence-wise balance loss
  double bias_update = 0.0;    // balance-bias step per training step (0: off)
  // Multi-token prediction: the MTP modules trained (added, randomly initialized, when the model
  // holds fewer) and the weight λ of their loss. 0: the model's modules are carried unchanged.
  int64_t mtp_depth = 0;
  double mtp_weight = 0.3;
  int64_t eval_every = 0;                        // validation loss every N steps and at the last (0: never)
  int64_t save_every = 0, keep_last = 3;         // checkpoint every N steps and at the last (0: never)
  bool resume = false;                           // continue from the newest good checkpoint in out_dir
  GemmPrecision precision = GemmPrecision::F32;  // BF16 falls back to F32 without AVX512-BF16
  bool recompute = false;                        // recompute activations per layer in backward (less memory)
  // What the gradients travel as between ranks (error feedback keeps what rounding lost).
  dist::GradCompression grad_compression = dist::GradCompression::None;
  // Reduce each range of gradients as soon as backward finishes it (true), or all of them only
  // after the whole backward (false: the same ranges in the same order, so the same sums; for
  // measuring what the overlap buys).
  bool comm_overlap = true;
  // Ranks that split the routed experts between them (1: every rank holds all of them). Divides
  // the number of ranks and of routed experts.
  int expert_parallel = 1;
  int threads = 1;
};

// Throws Error when the options make no sense for `ranks` data-parallel ranks (the messages name
// the CLI's flags; with expert parallelism it reads the model's config.json). Every rank finds
// the same, before any communication.
void check_options(const TrainerOptions& options, int ranks);

// One optimizer step, as the caller may print it (metrics.jsonl holds the same numbers).
struct StepReport {
  int64_t step = 0;  // 0-based
  double loss = 0, cross_entropy = 0, lr = 0, grad_norm = 0, tokens_per_second = 0;
  std::vector<ExpertLoadStats> expert_load;  // per MoE layer
  std::optional<double> val_loss;            // on the steps that evaluate
  double seconds_left = 0;                   // this run's mean step time × the steps to go
  CommBytes comm_bytes;                      // what left this rank during the step (0 on one rank)
  // Seconds the step spent blocked on communication: waiting for the gradients' reductions, the
  // weights' all-gather, the allreduces of loss, expert loads and gradient norm, and expert
  // parallelism's all-to-alls.
  double comm_wait_s = 0;
  // The data's own measures (MicroBatch::metrics), summed over the step: DPO's accuracy, ...
  std::map<std::string, double> extra;
  std::map<std::string, double> val_extra;  // the same over the validation set, when it ran
};

struct TrainSummary {
  double seconds = 0;              // run()'s wall time
  std::optional<double> val_loss;  // the last evaluation's
  size_t activation_bytes = 0;     // the last step's saved activations
};

class Trainer {
 public:
  // Sets the run up: checks the options, creates out_dir, writes the random model (config_path),
  // loads the parameters, maps the token files, builds the graph's buffers, and with resume
  // restores the newest checkpoint in out_dir that verifies. Throws Error on bad options or
  // files, when there is no checkpoint to resume, or when the newest good one was made with
  // other settings (seq, batch, grad_accum, seed, order, optimizer, precision). With `world`
  // (which must outlive the Trainer), every rank of it constructs a Trainer with the same
  // options; batch × grad_accum must be a multiple of its size.
  // `data`: what to learn from (SFT's conversations, DPO's pairs); null: pretraining's windows of
  // options.data_path (and val_data_path).
  explicit Trainer(TrainerOptions options, std::unique_ptr<TrainingData> data = nullptr);
  Trainer(TrainerOptions options, const dist::Communicator& world, std::unique_ptr<TrainingData> data = nullptr);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // Trains steps first_step() .. steps - 1 (once per Trainer): appends a line per step to
  // out_dir/metrics.jsonl (keeping a resumed run's earlier lines), calls on_step after each step,
  // saves checkpoints, then writes the model and the plots into out_dir. Throws Error when the
  // loss diverges or a file cannot be written (a failed checkpoint keeps the previous ones).
  TrainSummary run(const std::function<void(const StepReport&)>& on_step = {});

  // With resume: the checkpoint restored, and newer ones skipped because they did not verify.
  const std::optional<ResumedCheckpoint>& resumed() const { return resumed_; }
  int64_t first_step() const { return first_step_; }
  // What the GEMMs run in: F32 when BF16 was asked for on a CPU without AVX512-BF16.
  GemmPrecision precision() const { return precision_; }
  const Parameters& parameters() const { return p_; }
  const TrainingData& data() const { return *data_; }
  const dist::Communicator& world() const { return world_; }
  // This rank's share of a step: micro-batches of local_batch() windows, local_accum() of them.
  int64_t local_batch() const { return local_batch_; }
  int64_t local_accum() const { return local_accum_; }
  // This rank's shards of the dense and the expert region (flat-buffer offsets).
  const dist::Shard& dense_shard() const { return dense_optimizer_.shard(); }
  const dist::Shard& expert_shard() const { return expert_optimizer_.shard(); }
  // Bytes this rank holds for the parameters: values, gradients, its optimizer shards and the
  // data-parallel buffers (activations apart).
  size_t state_bytes() const;

 private:
  // This rank's shards of the step's summed gradients.
  struct ShardGrads {
    std::span<float> dense, experts;
  };
  double validation_loss(std::map<std::string, double>& extra);
  // Sums each value over the ranks, the largest for a "*_max" (the time blocked on it added to wait_seconds).
  void sum_over_ranks(std::map<std::string, double>& values, double& wait_seconds);
  // The step's micro-batches on this rank, summed over the ranks into report's loss and
  // cross-entropy and into loads; leaves this rank's shards of the summed gradients in the return.
  ShardGrads forward_backward(int64_t step, StepReport& report, ExpertLoads& loads);
  void save(int64_t step);                // a checkpoint of `step` optimizer steps, written by rank 0
  void dump_gradients(ShardGrads grads);  // --dump-grads: the step's summed, unclipped gradients
  // Collective: the weights and config.json into dir, as an HF directory (model.safetensors, or
  // under expert parallelism one shard per expert block and the index); returns the files this
  // rank wrote.
  std::vector<std::string> write_model_files(const std::string& dir);
  void resume();              // from the newest good checkpoint in out_dir
  void keep_master_shards();  // sharded_master_: drops the f32 values this rank does not keep
  // After the optimizer step: every rank's shards of the new weights to every rank (the time
  // blocked on it added to wait_seconds).
  void gather_weights(double& wait_seconds);
  // The checkpoint's error-feedback residuals when it was made by the same world, E and compression.
  void restore_residual(const std::string& checkpoint_dir, const nlohmann::json& state);
  // What a checkpoint's residuals were made by (they resume only in the same).
  nlohmann::json residual_world() const;
  Trainer(TrainerOptions options, const dist::Communicator* world,
          std::unique_ptr<TrainingData> data);  // world null: solo_

  dist::Communicator solo_;  // the world of a Trainer made without one
  const dist::Communicator& world_;
  TrainerOptions options_;
  // Expert parallelism: the ranks that together hold every expert, and the ranks holding the same
  // experts as this one (its expert gradients are reduced over these). One rank and the world
  // when options_.expert_parallel is 1.
  dist::Communicator expert_group_, expert_replicas_;
  ExpertExchange expert_exchange_;
  Parameters p_;
  std::unique_ptr<TrainingData> data_;
  DataParallel dense_parallel_, expert_parallel_;  // over world_ and expert_replicas_
  int64_t local_batch_ = 0, local_accum_ = 0;
  Optimizer dense_optimizer_, expert_optimizer_;  // this rank's shards
  std::optional<ResumedCheckpoint> resumed_;
  int64_t first_step_ = 0;
  ReducePlateau plateau_;  // Schedule::Plateau's state, saved in checkpoints
  std::unique_ptr<ElasticPenalty> ewc_;
  GemmPrecision precision_;
  // ZeRO-1 of the f32 master weights too (bf16 precision on more than one rank): a rank keeps the
  // f32 values of its shards and of the tensors read in f32 (f32_ranges_, in the dense region);
  // the graph runs on the bf16 copy, which the ranks all-gather.
  bool sharded_master_;
  std::vector<std::pair<size_t, size_t>> f32_ranges_;
  TrainGraph graph_;
  // Without comm_overlap: the ranges backward finished, reduced after it (kept, every step has the same).
  std::vector<std::pair<size_t, size_t>> ready_ranges_;
};

}  // namespace deepmoe::train
