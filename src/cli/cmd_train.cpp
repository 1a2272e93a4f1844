// deepmoe train: the training loop over the library's pieces (data windows, TrainGraph,
// clipping, optimizer, schedule, balance bias update), writing metrics.jsonl and the model.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <sys/resource.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "cli/common.h"
#include "core/error.h"
#include "io/token_windows.h"
#include "kernels/gemm_bf16.h"
#include "model/random_init.h"
#include "train/checkpoint.h"
#include "train/model_train.h"
#include "train/optimizer.h"
#include "train/plots.h"

namespace deepmoe::cli {

namespace {

struct TrainOptions {
  std::string init, config, data, val_data, out, dump_grads;
  std::string schedule = "constant", optimizer = "adamw", order = "random", precision = "f32";
  int64_t seq = 128, batch = 8, grad_accum = 1, steps = 100, warmup = 0, eval_every = 0, save_every = 0, keep_last = 3;
  bool resume = false, recompute = false;
  int threads = 0;
  double lr = 1e-3, min_lr = 0.0, weight_decay = 0.0, clip = 1.0, aux_loss = 0.0, bias_update = 0.0, eps = 1e-8;
  std::optional<double> beta1, beta2;
  uint64_t seed = 0;
};

size_t peak_resident_bytes() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return size_t(usage.ru_maxrss) * 1024;  // Linux reports KiB
}

// Adds γ·sign(mean load − load_i) to each noaux_tc layer's e_score_correction_bias.
void update_balance_bias(const Config& c, train::Parameters& p, const std::vector<std::vector<int64_t>>& loads,
                         double gamma) {
  size_t moe_index = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    if (!c.is_moe_layer(l)) continue;
    const auto& load = loads[moe_index++];
    float* bias = p.value(fmt::format("model.layers.{}.mlp.gate.e_score_correction_bias", l));
    if (bias == nullptr) continue;
    double mean = 0;
    for (const int64_t v : load) mean += double(v) / double(load.size());
    for (size_t i = 0; i < load.size(); ++i)
      bias[i] += float(gamma * double((mean > double(load[i])) - (mean < double(load[i]))));
  }
}

double validation_loss(train::TrainGraph& graph, train::Parameters& p, const TokenWindows& windows,
                       const TrainOptions& o) {
  std::vector<int32_t> inputs, targets;
  double total = 0;
  // The whole validation file once (sequential windows), up to 32 batches.
  const int64_t batches = std::clamp<int64_t>((windows.tokens() - 1) / (o.seq * o.batch), 1, 32);
  for (int64_t b = 0; b < batches; ++b) {
    windows.batch(b, o.batch, inputs, targets);
    total += graph.run(p, inputs, targets, o.batch, o.seq, 0.0, false).cross_entropy;
  }
  return total / double(batches);
}

void run_training(const TrainOptions& o) {
  if (o.seq < 1 || o.batch < 1 || o.grad_accum < 1 || o.steps < 0) fail("--seq, --batch, --grad-accum must be >= 1");
  if (!(o.lr > 0) || !std::isfinite(o.lr)) fail("--lr must be a positive number, found {}", o.lr);
  std::filesystem::create_directories(o.out);
  std::string model_dir = o.init;
  if (!o.config.empty()) {  // a fresh random model from a config
    model_dir = (std::filesystem::path(o.out) / "initial").string();
    write_random_checkpoint(o.config, model_dir, o.seed, DType::F32);
  }
  train::Parameters p = train::Parameters::load(model_dir);
  const Config& c = p.config();
  const TokenWindows data(o.data, o.seq, o.order == "sequential" ? WindowOrder::Sequential : WindowOrder::Random,
                          o.seed);
  std::unique_ptr<TokenWindows> val;
  if (!o.val_data.empty()) val = std::make_unique<TokenWindows>(o.val_data, o.seq, WindowOrder::Sequential, 0);

  train::OptimizerOptions opt;
  opt.kind = o.optimizer == "lion" ? train::OptimizerKind::Lion : train::OptimizerKind::AdamW;
  opt.beta1 = o.beta1.value_or(0.9);
  opt.beta2 = o.beta2.value_or(opt.kind == train::OptimizerKind::Lion ? 0.99 : 0.999);
  opt.eps = o.eps;
  opt.weight_decay = o.weight_decay;
  train::Optimizer optimizer(p, opt);
  train::ScheduleOptions schedule;
  schedule.kind = o.schedule == "cosine" ? train::Schedule::Cosine : o.schedule == "wsd" ? train::Schedule::Wsd
                                                                                          : train::Schedule::Constant;
  schedule.lr = o.lr;
  schedule.min_lr = o.min_lr;
  schedule.warmup = o.warmup;
  schedule.total_steps = o.steps;

  // What a checkpoint must agree with to be resumed exactly.
  const nlohmann::json run = {{"seq", o.seq}, {"batch", o.batch}, {"grad_accum", o.grad_accum}, {"seed", o.seed},
                              {"order", o.order}, {"optimizer", o.optimizer}, {"precision", o.precision}};
  int64_t first_step = 0;
  const std::string metrics_path = (std::filesystem::path(o.out) / "metrics.jsonl").string();
  std::vector<std::string> kept_metrics;
  if (o.resume) {
    // The newest checkpoint that verifies; each newer one that does not costs one warning line.
    const train::ResumedCheckpoint resumed = train::resume_newest_good(o.out, p, optimizer);
    for (const auto& [dir, why] : resumed.skipped)
      fmt::print(stderr, "deepmoe: warning: skipping checkpoint {}: {}\n", dir, why);
    const std::string& newest = resumed.dir;
    const nlohmann::json& state = resumed.state;
    if (state.value("run", nlohmann::json()) != run)
      fail("--resume: {} was made with different settings ({}), not {}", newest,
           state.value("run", nlohmann::json()).dump(), run.dump());
    first_step = state.value("step", int64_t(0));
    std::ifstream old(metrics_path);
    for (std::string line; std::getline(old, line) && int64_t(kept_metrics.size()) < first_step;) kept_metrics.push_back(line);
    fmt::print("resuming from {} (step {})\n", newest, first_step);
  }

  train::GemmPrecision precision = train::GemmPrecision::F32;
  if (o.precision == "bf16") {
    if (cpu_has_bf16_gemm())
      precision = train::GemmPrecision::BF16;
    else
      fmt::print(stderr, "deepmoe: note: this CPU has no AVX512-BF16, so --precision bf16 trains in f32\n");
  }
  train::TrainGraph graph(c, resolve_threads(o.threads), precision, o.recompute);
  std::ofstream metrics(metrics_path, std::ios::trunc);
  for (const auto& line : kept_metrics) metrics << line << "\n";
  const bool terminal = isatty(STDOUT_FILENO) != 0;
  std::vector<int32_t> inputs, targets;
  std::optional<double> last_val_loss;
  const auto start = std::chrono::steady_clock::now();
  for (int64_t step = first_step; step < o.steps; ++step) {
    const auto step_start = std::chrono::steady_clock::now();
    p.zero_grads();
    double loss = 0, ce = 0;
    std::vector<std::vector<int64_t>> loads;
    for (int64_t micro = 0; micro < o.grad_accum; ++micro) {
      data.batch(step * o.grad_accum + micro, o.batch, inputs, targets);
      const auto r = graph.run(p, inputs, targets, o.batch, o.seq, o.aux_loss, true, 1.0f / float(o.grad_accum));
      loss += r.loss / double(o.grad_accum);
      ce += r.cross_entropy / double(o.grad_accum);
      loads.resize(r.expert_counts.size());
      for (size_t l = 0; l < r.expert_counts.size(); ++l) {
        loads[l].resize(r.expert_counts[l].size());
        for (size_t i = 0; i < r.expert_counts[l].size(); ++i) loads[l][i] += r.expert_counts[l][i];
      }
    }
    if (!std::isfinite(loss)) fail("step {}: the loss is {} (diverged; try a lower --lr or --clip)", step, loss);
    if (step == 0 && !o.dump_grads.empty()) p.save(o.dump_grads, train::Parameters::Which::Grads);
    const double norm = train::clip_gradients(p, o.clip);
    const double lr = train::learning_rate(schedule, step);
    optimizer.step(p, lr);
    if (o.bias_update > 0) update_balance_bias(c, p, loads, o.bias_update);

    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - step_start).count();
    const double tokens_per_second = double(o.batch * o.seq * o.grad_accum) / seconds;
    nlohmann::json line = {{"step", step}, {"loss", loss}, {"cross_entropy", ce}, {"lr", lr}, {"grad_norm", norm},
                           {"tokens_per_second", tokens_per_second}};
    nlohmann::json load_stats = nlohmann::json::array();
    for (const auto& load : loads) {
      double mean = 0, max = 0, var = 0;
      for (const int64_t v : load) mean += double(v) / double(load.size());
      for (const int64_t v : load) {
        max = std::max(max, double(v));
        var += (double(v) - mean) * (double(v) - mean) / double(load.size());
      }
      load_stats.push_back({{"max_over_mean", max / mean}, {"cv", std::sqrt(var) / mean}});
    }
    line["expert_load"] = load_stats;
    if (val && o.eval_every > 0 && ((step + 1) % o.eval_every == 0 || step + 1 == o.steps)) {
      last_val_loss = validation_loss(graph, p, *val, o);
      line["val_loss"] = *last_val_loss;
    }
    metrics << line.dump() << "\n";
    metrics.flush();
    const std::string val_text =
        line.contains("val_loss") ? fmt::format("  val {:.4f}", line["val_loss"].get<double>()) : "";
    if (terminal) {  // one line that redraws: a bar, the numbers, and the time left
      const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      const double eta = elapsed / double(step + 1 - first_step) * double(o.steps - step - 1);
      const int width = 24, filled = int(double(width) * double(step + 1) / double(o.steps));
      fmt::print("\r[{}{}] {}/{}  loss {:.4f}  lr {:.2e}  {:.0f} tok/s  ETA {:.0f}s{}   ", std::string(size_t(filled), '#'),
                 std::string(size_t(width - filled), '.'), step + 1, o.steps, loss, lr, tokens_per_second, eta, val_text);
    } else {
      fmt::print("step {:>5}/{}  loss {:.4f}  lr {:.2e}  grad norm {:.3f}  {:.0f} tok/s{}\n", step + 1, o.steps, loss,
                 lr, norm, tokens_per_second, val_text);
    }
    std::fflush(stdout);
    if (o.save_every > 0 && ((step + 1) % o.save_every == 0 || step + 1 == o.steps)) {
      const nlohmann::json state = {{"step", step + 1}, {"optimizer_steps", optimizer.steps_taken()}, {"run", run}};
      train::save_checkpoint(o.out, step + 1, p, optimizer, state, o.keep_last);
    }
  }
  if (terminal) fmt::print("\n");
  p.save(o.out);
  copy_tokenizer_files_if_present(model_dir, o.out);
  train::write_plots(o.out);
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  fmt::print("trained {} steps in {:.1f} s -> {}\n", o.steps, total, o.out);
  if (last_val_loss)
    fmt::print("validation loss {:.4f}, perplexity {:.1f}\n", *last_val_loss, std::exp(*last_val_loss));
  fmt::print("memory: activations {:.1f} MiB{}, peak resident {:.1f} MiB\n", double(graph.activation_bytes()) / 1048576.0,
             o.recompute ? " (recomputed per layer)" : "", double(peak_resident_bytes()) / 1048576.0);
}

}  // namespace

void add_train_command(CLI::App& app) {
  auto o = std::make_shared<TrainOptions>();
  auto* command = app.add_subcommand("train", "Train a DeepSeek-architecture model on a token file");
  auto* init = command->add_option("--init", o->init, "start from this HF model directory");
  auto* config = command->add_option("--config", o->config, "start from a random model of this config.json");
  init->excludes(config);
  command->add_option("--data", o->data, "training tokens (uint32 file)")->required();
  command->add_option("--val-data", o->val_data, "validation tokens (uint32 file)");
  command->add_option("--seq", o->seq, "tokens per sequence");
  command->add_option("--batch", o->batch, "sequences per micro-batch");
  command->add_option("--grad-accum", o->grad_accum, "micro-batches per step");
  command->add_option("--steps", o->steps, "optimizer steps");
  command->add_option("--lr", o->lr, "peak learning rate");
  command->add_option("--min-lr", o->min_lr, "floor of the cosine / WSD decay");
  command->add_option("--warmup", o->warmup, "linear warmup steps");
  command->add_option("--schedule", o->schedule, "constant, cosine or wsd")->check(CLI::IsMember({"constant", "cosine", "wsd"}));
  command->add_option("--optimizer", o->optimizer, "adamw or lion")->check(CLI::IsMember({"adamw", "lion"}));
  command->add_option("--beta1", o->beta1, "first-moment decay (default 0.9)");
  command->add_option("--beta2", o->beta2, "second-moment decay (AdamW 0.999, Lion 0.99)");
  command->add_option("--eps", o->eps, "AdamW epsilon");
  command->add_option("--weight-decay", o->weight_decay, "decoupled weight decay");
  command->add_option("--clip", o->clip, "global gradient-norm limit (0: off)");
  command->add_option("--aux-loss", o->aux_loss, "weight of the sequence-wise balance loss");
  command->add_option("--bias-update", o->bias_update, "aux-loss-free balancing: bias step per training step");
  command->add_option("--order", o->order, "random or sequential windows")->check(CLI::IsMember({"random", "sequential"}));
  command->add_option("--seed", o->seed, "seed for windows and --config initialization");
  command->add_option("--eval-every", o->eval_every, "validation loss every N steps (needs --val-data)");
  command->add_option("--dump-grads", o->dump_grads, "write step 0's unclipped gradients here (HF names)");
  command->add_option("--save-every", o->save_every, "checkpoint every N steps into OUT/checkpoints (0: never)");
  command->add_option("--keep-last", o->keep_last, "checkpoints to keep");
  command->add_flag("--resume", o->resume, "continue from the newest checkpoint in OUT");
  command->add_option("--precision", o->precision, "GEMM operands: f32, or bf16 with f32 accumulation and f32 master "
                      "weights (needs AVX512-BF16; f32 otherwise)")->check(CLI::IsMember({"f32", "bf16"}));
  command->add_flag("--recompute", o->recompute, "keep only layer inputs and recompute activations in backward");
  command->add_option("--threads", o->threads, "threads (0: all cores)");
  command->add_option("--out", o->out, "output directory")->required();
  command->callback([o, init, config] {
    if (!*init && !*config) fail("train needs --init DIR or --config FILE.json");
    run_training(*o);
  });
}

}  // namespace deepmoe::cli
