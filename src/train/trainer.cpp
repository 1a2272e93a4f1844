#include "train/trainer.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <utility>

#include "core/error.h"
#include "kernels/gemm_bf16.h"
#include "model/random_init.h"
#include "train/plots.h"

namespace deepmoe::train {

void check_options(const TrainerOptions& o, int ranks) {
  if (o.seq < 1 || o.batch < 1 || o.grad_accum < 1 || o.steps < 0) fail("--seq, --batch, --grad-accum must be >= 1");
  if (!(o.lr > 0) || !std::isfinite(o.lr)) fail("--lr must be a positive number, found {}", o.lr);
  if (o.threads < 1) fail("training needs at least one thread, found {}", o.threads);
  if (o.init_dir.empty() == o.config_path.empty())
    fail("training starts from a model directory or from a config.json, one of the two");
  if (o.batch * o.grad_accum % ranks != 0)
    fail("--batch {} x --grad-accum {} = {} windows a step cannot be split evenly over {} ranks", o.batch, o.grad_accum,
         o.batch * o.grad_accum, ranks);
}

namespace {

TrainerOptions checked(TrainerOptions o, int ranks) {
  check_options(o, ranks);
  return o;
}

// A rank's micro-batch: the largest divisor of its share of the step's windows that is at most
// --batch, so no rank holds more activations than one process would.
int64_t local_batch_of(const TrainerOptions& o, int ranks) {
  const int64_t share = o.batch * o.grad_accum / ranks;
  for (int64_t b = std::min(o.batch, share); b > 1; --b)
    if (share % b == 0) return b;
  return 1;
}

// Creates out_dir and, for a run from a config, the random model in out_dir/initial (rank 0
// writes, the others wait for it); returns the directory to load the weights from.
std::string prepare_model_dir(const TrainerOptions& o, const dist::Communicator& world) {
  const std::string model_dir =
      o.config_path.empty() ? o.init_dir : (std::filesystem::path(o.out_dir) / "initial").string();
  if (world.is_root()) {
    std::filesystem::create_directories(o.out_dir);
    if (!o.config_path.empty()) write_random_checkpoint(o.config_path, model_dir, o.seed, DType::F32);
  }
  world.barrier();
  return model_dir;
}

GemmPrecision usable_precision(GemmPrecision asked) {
  return asked == GemmPrecision::BF16 && !cpu_has_bf16_gemm() ? GemmPrecision::F32 : asked;
}

// What a checkpoint must agree with to be resumed exactly. The names are state.json's (the
// CLI's flag values), so checkpoints of earlier runs still resume.
nlohmann::json run_settings(const TrainerOptions& o) {
  const char* order = o.order == WindowOrder::Sequential ? "sequential" : "random";
  const char* optimizer = o.optimizer.kind == OptimizerKind::Lion ? "lion" : "adamw";
  const char* precision = o.precision == GemmPrecision::BF16 ? "bf16" : "f32";
  return {{"seq", o.seq},   {"batch", o.batch},       {"grad_accum", o.grad_accum}, {"seed", o.seed},
          {"order", order}, {"optimizer", optimizer}, {"precision", precision}};
}

nlohmann::json metrics_line(const StepReport& r) {
  nlohmann::json line = {{"step", r.step}, {"loss", r.loss},           {"cross_entropy", r.cross_entropy},
                         {"lr", r.lr},     {"grad_norm", r.grad_norm}, {"tokens_per_second", r.tokens_per_second}};
  nlohmann::json load_stats = nlohmann::json::array();
  for (const ExpertLoadStats& s : r.expert_load)
    load_stats.push_back({{"max_over_mean", s.max_over_mean}, {"cv", s.cv}});
  line["expert_load"] = load_stats;
  if (r.val_loss) line["val_loss"] = *r.val_loss;
  line["comm_bytes"] = {{"reduce_scatter", r.comm_bytes.reduce_scatter}, {"all_gather", r.comm_bytes.all_gather}};
  line["comm_wait_s"] = r.comm_wait_s;
  return line;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Runs `blocking` (a call that waits on the other ranks) and adds its wall time to `seconds`.
template <class F>
void timed(double& seconds, F&& blocking) {
  const auto start = std::chrono::steady_clock::now();
  std::forward<F>(blocking)();
  seconds += seconds_since(start);
}

}  // namespace

Trainer::Trainer(TrainerOptions options) : Trainer(std::move(options), nullptr) {}

Trainer::Trainer(TrainerOptions options, const dist::Communicator& world) : Trainer(std::move(options), &world) {}

Trainer::Trainer(TrainerOptions options, const dist::Communicator* world)
    : solo_(dist::Communicator::solo()),
      world_(world ? *world : solo_),
      options_(checked(std::move(options), world_.size())),
      p_(Parameters::load(prepare_model_dir(options_, world_))),
      data_(options_.data_path, options_.seq, options_.order, options_.seed),
      val_(options_.val_data_path.empty()
               ? nullptr
               : std::make_unique<TokenWindows>(options_.val_data_path, options_.seq, WindowOrder::Sequential, 0)),
      data_parallel_(world_, p_.values().size(), options_.grad_compression),
      local_batch_(local_batch_of(options_, world_.size())),
      local_accum_(options_.batch * options_.grad_accum / world_.size() / local_batch_),
      optimizer_(p_, options_.optimizer, data_parallel_.shard()),
      precision_(usable_precision(options_.precision)),
      graph_(p_.config(), options_.threads, precision_, options_.recompute) {
  if (!options_.resume) return;
  if (world_.size() == 1) {
    resumed_ = resume_newest_good(options_.out_dir, p_, optimizer_);
  } else {
    // Checkpoints hold the whole optimizer state (any number of ranks can resume them): each
    // rank reads it all and keeps its shard.
    Optimizer whole(p_, options_.optimizer);
    resumed_ = resume_newest_good(options_.out_dir, p_, whole);
    optimizer_.copy_shard_from(whole);
  }
  const nlohmann::json run = run_settings(options_);
  const nlohmann::json made_with = resumed_->state.value("run", nlohmann::json());
  if (made_with != run)
    fail("--resume: {} was made with different settings ({}), not {}", resumed_->dir, made_with.dump(), run.dump());
  first_step_ = resumed_->state.value("step", int64_t(0));
}

Trainer::~Trainer() = default;

double Trainer::validation_loss() {
  // The whole validation file once (sequential windows), up to 32 batches, dealt out to the
  // ranks in turn. Each batch's loss sits at its own place, so the sum over ranks adds zeros
  // and the mean is the one a single process computes, bit for bit.
  const int64_t batches = std::clamp<int64_t>((val_->tokens() - 1) / (options_.seq * options_.batch), 1, 32);
  std::vector<double> losses(size_t(batches), 0.0);
  for (int64_t b = world_.rank(); b < batches; b += world_.size()) {
    val_->batch(b, options_.batch, inputs_, targets_);
    losses[size_t(b)] = graph_.run(p_, inputs_, targets_, options_.batch, options_.seq, 0.0, false).cross_entropy;
  }
  world_.allreduce_sum(losses);
  double total = 0;
  for (const double loss : losses) total += loss;
  return total / double(batches);
}

std::span<float> Trainer::forward_backward(int64_t step, StepReport& report, ExpertLoads& loads) {
  const TrainerOptions& o = options_;
  // This rank's windows: a contiguous share of the step's batch × grad_accum, in rank order.
  const int64_t first_window = step * o.batch * o.grad_accum + world_.rank() * local_batch_ * local_accum_;
  // Each micro-batch's loss is a mean over its windows: weighted by its part of the step's windows
  // (1 / grad_accum for one process), the parts of all ranks add up to the step's mean.
  const double parts = double(o.batch * o.grad_accum) / double(local_batch_);
  // The last micro-batch finishes the gradients: its backward starts their reduction, or without
  // overlap notes the ranges for after it.
  ready_ranges_.clear();
  const GradientsReady reduce = [&](size_t begin, size_t end) {
    if (o.comm_overlap) data_parallel_.reduce_range(p_.grads(), begin, end);
    else ready_ranges_.emplace_back(begin, end);
  };
  double losses[2] = {0, 0};  // loss, cross-entropy
  for (int64_t micro = 0; micro < local_accum_; ++micro) {
    data_.windows(first_window + micro * local_batch_, local_batch_, o.batch, inputs_, targets_);
    const StepLoss r = graph_.run(p_, inputs_, targets_, local_batch_, o.seq, o.aux_loss, true, 1.0f / float(parts),
                                  micro + 1 == local_accum_ ? reduce : GradientsReady());
    losses[0] += r.loss / parts;
    losses[1] += r.cross_entropy / parts;
    loads.resize(r.expert_counts.size());
    for (size_t l = 0; l < r.expert_counts.size(); ++l) {
      loads[l].resize(r.expert_counts[l].size());
      for (size_t i = 0; i < r.expert_counts[l].size(); ++i) loads[l][i] += r.expert_counts[l][i];
    }
  }
  for (const auto& [begin, end] : ready_ranges_) data_parallel_.reduce_range(p_.grads(), begin, end);
  std::span<float> grads;
  timed(report.comm_wait_s, [&] { grads = data_parallel_.finish(p_.grads()); });
  timed(report.comm_wait_s, [&] { world_.allreduce_sum(losses); });
  report.loss = losses[0];
  report.cross_entropy = losses[1];
  if (world_.size() > 1) {
    std::vector<int64_t> flat;
    for (const auto& load : loads) flat.insert(flat.end(), load.begin(), load.end());
    timed(report.comm_wait_s, [&] { world_.allreduce_sum(flat); });
    size_t i = 0;
    for (auto& load : loads)
      for (int64_t& count : load) count = flat[i++];
  }
  return grads;
}

void Trainer::dump_gradients(std::span<float> grads) {
  // The summed gradients are sharded over the ranks: gathered whole into the gradient buffer
  // (recomputed from zero next step anyway) for rank 0 to write.
  if (world_.size() > 1) {
    std::copy(grads.begin(), grads.end(), p_.grads().begin() + ptrdiff_t(data_parallel_.shard().begin));
    data_parallel_.all_gather(p_.grads());
  }
  if (world_.is_root()) p_.save(options_.dump_grads_dir, Parameters::Which::Grads);
}

void Trainer::save(int64_t step) {
  const nlohmann::json state = {
      {"step", step}, {"optimizer_steps", optimizer_.steps_taken()}, {"run", run_settings(options_)}};
  if (world_.size() == 1) {
    save_checkpoint(options_.out_dir, step, p_, optimizer_, state, options_.keep_last);
    return;
  }
  // The whole optimizer state gathered on rank 0, in the format one process writes, so any
  // number of ranks can resume it. (Each rank writing its own shard is for a later change.)
  std::optional<Optimizer> whole;
  if (world_.is_root()) whole.emplace(p_, options_.optimizer);
  const std::span<float> none;
  data_parallel_.gather_to_root(optimizer_.first_moment(), whole ? std::span<float>(whole->first_moment()) : none);
  if (!optimizer_.second_moment().empty())
    data_parallel_.gather_to_root(optimizer_.second_moment(), whole ? std::span<float>(whole->second_moment()) : none);
  if (!whole) return;
  whole->set_steps_taken(optimizer_.steps_taken());
  save_checkpoint(options_.out_dir, step, p_, *whole, state, options_.keep_last);
}

TrainSummary Trainer::run(const std::function<void(const StepReport&)>& on_step) {
  const TrainerOptions& o = options_;
  ScheduleOptions schedule;
  schedule.kind = o.schedule;
  schedule.lr = o.lr;
  schedule.min_lr = o.min_lr;
  schedule.warmup = o.warmup;
  schedule.total_steps = o.steps;

  // A resumed run's metrics are those of the steps before its checkpoint, then its own. Rank 0
  // writes them.
  std::ofstream metrics;
  if (world_.is_root()) {
    const std::string metrics_path = (std::filesystem::path(o.out_dir) / "metrics.jsonl").string();
    std::vector<std::string> kept_metrics;
    std::ifstream old(metrics_path);
    for (std::string line; int64_t(kept_metrics.size()) < first_step_ && std::getline(old, line);)
      kept_metrics.push_back(line);
    old.close();
    metrics.open(metrics_path, std::ios::trunc);
    for (const auto& line : kept_metrics) metrics << line << "\n";
  }

  TrainSummary summary;
  const auto start = std::chrono::steady_clock::now();
  ThreadPool& pool = graph_.context().pool();
  const dist::Shard shard = data_parallel_.shard();
  for (int64_t step = first_step_; step < o.steps; ++step) {
    const auto step_start = std::chrono::steady_clock::now();
    p_.zero_grads(pool);
    StepReport report;
    report.step = step;
    ExpertLoads loads;
    const std::span<float> grads = forward_backward(step, report, loads);
    if (!std::isfinite(report.loss))
      fail("step {}: the loss is {} (diverged; try a lower --lr or --clip)", step, report.loss);
    if (step == 0 && !o.dump_grads_dir.empty()) dump_gradients(grads);
    double squares[1] = {squared_gradient_norm(pool, p_, shard, grads)};
    timed(report.comm_wait_s, [&] { world_.allreduce_sum(squares); });
    report.grad_norm = std::sqrt(squares[0]);
    scale_gradients(pool, p_, shard, grads, clip_coefficient(report.grad_norm, o.clip));
    report.lr = learning_rate(schedule, step);
    optimizer_.step(pool, p_, grads, report.lr);
    timed(report.comm_wait_s, [&] { data_parallel_.all_gather(p_.values()); });
    if (o.bias_update > 0) update_balance_bias(p_.config(), p_, loads, o.bias_update);

    report.tokens_per_second = double(o.batch * o.seq * o.grad_accum) / seconds_since(step_start);
    report.comm_bytes = data_parallel_.take_bytes();
    for (const auto& load : loads) report.expert_load.push_back(expert_load_stats(load));
    if (val_ && o.eval_every > 0 && ((step + 1) % o.eval_every == 0 || step + 1 == o.steps)) {
      report.val_loss = validation_loss();
      summary.val_loss = report.val_loss;
    }
    if (metrics.is_open()) {
      metrics << metrics_line(report).dump() << "\n";
      metrics.flush();
    }
    report.seconds_left = seconds_since(start) / double(step + 1 - first_step_) * double(o.steps - step - 1);
    if (on_step) on_step(report);
    if (o.save_every > 0 && ((step + 1) % o.save_every == 0 || step + 1 == o.steps)) save(step + 1);
  }
  if (world_.is_root()) {
    p_.save(o.out_dir);
    write_plots(o.out_dir);
  }
  summary.seconds = seconds_since(start);
  summary.activation_bytes = graph_.activation_bytes();
  return summary;
}

}  // namespace deepmoe::train
