#include "train/trainer.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "kernels/gemm_bf16.h"
#include "model/random_init.h"
#include "train/plots.h"

namespace deepmoe::train {

namespace {

// The options, once they make sense. The messages name the CLI's flags: its users read them.
TrainerOptions checked(TrainerOptions o) {
  if (o.seq < 1 || o.batch < 1 || o.grad_accum < 1 || o.steps < 0) fail("--seq, --batch, --grad-accum must be >= 1");
  if (!(o.lr > 0) || !std::isfinite(o.lr)) fail("--lr must be a positive number, found {}", o.lr);
  if (o.threads < 1) fail("training needs at least one thread, found {}", o.threads);
  if (o.init_dir.empty() == o.config_path.empty())
    fail("training starts from a model directory or from a config.json, one of the two");
  return o;
}

// Creates out_dir and, for a run from a config, the random model in out_dir/initial; returns the
// directory to load the weights from.
std::string prepare_model_dir(const TrainerOptions& o) {
  std::filesystem::create_directories(o.out_dir);
  if (o.config_path.empty()) return o.init_dir;
  const std::string model_dir = (std::filesystem::path(o.out_dir) / "initial").string();
  write_random_checkpoint(o.config_path, model_dir, o.seed, DType::F32);
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
  return line;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

Trainer::Trainer(TrainerOptions options)
    : options_(checked(std::move(options))),
      p_(Parameters::load(prepare_model_dir(options_))),
      data_(options_.data_path, options_.seq, options_.order, options_.seed),
      val_(options_.val_data_path.empty()
               ? nullptr
               : std::make_unique<TokenWindows>(options_.val_data_path, options_.seq, WindowOrder::Sequential, 0)),
      optimizer_(p_, options_.optimizer),
      precision_(usable_precision(options_.precision)),
      graph_(p_.config(), options_.threads, precision_, options_.recompute) {
  if (!options_.resume) return;
  resumed_ = resume_newest_good(options_.out_dir, p_, optimizer_);
  const nlohmann::json run = run_settings(options_);
  const nlohmann::json made_with = resumed_->state.value("run", nlohmann::json());
  if (made_with != run)
    fail("--resume: {} was made with different settings ({}), not {}", resumed_->dir, made_with.dump(), run.dump());
  first_step_ = resumed_->state.value("step", int64_t(0));
}

Trainer::~Trainer() = default;

double Trainer::validation_loss() {
  double total = 0;
  // The whole validation file once (sequential windows), up to 32 batches.
  const int64_t batches = std::clamp<int64_t>((val_->tokens() - 1) / (options_.seq * options_.batch), 1, 32);
  for (int64_t b = 0; b < batches; ++b) {
    val_->batch(b, options_.batch, inputs_, targets_);
    total += graph_.run(p_, inputs_, targets_, options_.batch, options_.seq, 0.0, false).cross_entropy;
  }
  return total / double(batches);
}

TrainSummary Trainer::run(const std::function<void(const StepReport&)>& on_step) {
  const TrainerOptions& o = options_;
  ScheduleOptions schedule;
  schedule.kind = o.schedule;
  schedule.lr = o.lr;
  schedule.min_lr = o.min_lr;
  schedule.warmup = o.warmup;
  schedule.total_steps = o.steps;

  // A resumed run's metrics are those of the steps before its checkpoint, then its own.
  const std::string metrics_path = (std::filesystem::path(o.out_dir) / "metrics.jsonl").string();
  std::vector<std::string> kept_metrics;
  std::ifstream old(metrics_path);
  for (std::string line; int64_t(kept_metrics.size()) < first_step_ && std::getline(old, line);)
    kept_metrics.push_back(line);
  old.close();
  std::ofstream metrics(metrics_path, std::ios::trunc);
  for (const auto& line : kept_metrics) metrics << line << "\n";

  TrainSummary summary;
  const auto start = std::chrono::steady_clock::now();
  for (int64_t step = first_step_; step < o.steps; ++step) {
    const auto step_start = std::chrono::steady_clock::now();
    p_.zero_grads(graph_.context().pool());
    StepReport report;
    report.step = step;
    ExpertLoads loads;
    for (int64_t micro = 0; micro < o.grad_accum; ++micro) {
      data_.batch(step * o.grad_accum + micro, o.batch, inputs_, targets_);
      const StepLoss r =
          graph_.run(p_, inputs_, targets_, o.batch, o.seq, o.aux_loss, true, 1.0f / float(o.grad_accum));
      report.loss += r.loss / double(o.grad_accum);
      report.cross_entropy += r.cross_entropy / double(o.grad_accum);
      loads.resize(r.expert_counts.size());
      for (size_t l = 0; l < r.expert_counts.size(); ++l) {
        loads[l].resize(r.expert_counts[l].size());
        for (size_t i = 0; i < r.expert_counts[l].size(); ++i) loads[l][i] += r.expert_counts[l][i];
      }
    }
    if (!std::isfinite(report.loss))
      fail("step {}: the loss is {} (diverged; try a lower --lr or --clip)", step, report.loss);
    if (step == 0 && !o.dump_grads_dir.empty()) p_.save(o.dump_grads_dir, Parameters::Which::Grads);
    report.grad_norm = clip_gradients(graph_.context().pool(), p_, o.clip);
    report.lr = learning_rate(schedule, step);
    optimizer_.step(graph_.context().pool(), p_, report.lr);
    if (o.bias_update > 0) update_balance_bias(p_.config(), p_, loads, o.bias_update);

    report.tokens_per_second = double(o.batch * o.seq * o.grad_accum) / seconds_since(step_start);
    for (const auto& load : loads) report.expert_load.push_back(expert_load_stats(load));
    if (val_ && o.eval_every > 0 && ((step + 1) % o.eval_every == 0 || step + 1 == o.steps)) {
      report.val_loss = validation_loss();
      summary.val_loss = report.val_loss;
    }
    metrics << metrics_line(report).dump() << "\n";
    metrics.flush();
    report.seconds_left = seconds_since(start) / double(step + 1 - first_step_) * double(o.steps - step - 1);
    if (on_step) on_step(report);
    if (o.save_every > 0 && ((step + 1) % o.save_every == 0 || step + 1 == o.steps)) {
      const nlohmann::json state = {
          {"step", step + 1}, {"optimizer_steps", optimizer_.steps_taken()}, {"run", run_settings(o)}};
      save_checkpoint(o.out_dir, step + 1, p_, optimizer_, state, o.keep_last);
    }
  }
  p_.save(o.out_dir);
  write_plots(o.out_dir);
  summary.seconds = seconds_since(start);
  summary.activation_bytes = graph_.activation_bytes();
  return summary;
}

}  // namespace deepmoe::train
