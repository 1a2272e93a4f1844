#include "cli/training_run.h"

#include <sched.h>
#include <unistd.h>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>
#include <string>
#include <thread>

#include "cli/common.h"
#include "core/error.h"
#include "dist/grad_codec.h"
#include "dist/world.h"
#include "model/config.h"
#include "train/trainer.h"

namespace deepmoe::cli {

namespace {

// --threads 0 under mpirun: the CPUs this rank may use, shared with the other ranks on its host
// unless mpirun already bound each rank to CPUs of its own.
int threads_per_rank(int requested, const dist::Communicator& world) {
  const int allowed = resolve_threads(requested);
  if (requested > 0 || world.size() == 1) return allowed;
  const char* local = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
  const int local_ranks = local ? std::max(1, std::atoi(local)) : 1;
  const int machine = int(std::max(1u, std::thread::hardware_concurrency()));
  return allowed < machine ? allowed : std::max(1, allowed / local_ranks);
}

train::TrainerOptions trainer_options(const TrainFlags& f, const dist::Communicator& world) {
  train::TrainerOptions o = f.trainer;
  o.schedule = f.schedule == "cosine"    ? train::Schedule::Cosine
               : f.schedule == "wsd"     ? train::Schedule::Wsd
               : f.schedule == "plateau" ? train::Schedule::Plateau
                                         : train::Schedule::Constant;
  o.order = f.order == "sequential" ? WindowOrder::Sequential : WindowOrder::Random;
  o.precision = f.precision == "bf16" ? GemmPrecision::BF16 : GemmPrecision::F32;
  o.optimizer.kind = f.optimizer == "lion" ? train::OptimizerKind::Lion : train::OptimizerKind::AdamW;
  o.optimizer.beta1 = f.beta1.value_or(0.9);
  o.optimizer.beta2 = f.beta2.value_or(o.optimizer.kind == train::OptimizerKind::Lion ? 0.99 : 0.999);
  o.grad_compression = dist::parse_grad_compression(f.grad_compression);
  o.comm_overlap = f.comm_overlap == "on";
  o.threads = threads_per_rank(f.threads, world);
  return o;
}

// Which routed experts of each MoE layer a rank holds, and the bytes it keeps for the parameters.
std::string rank_holdings(const train::Trainer& trainer) {
  const train::ExpertShare& share = trainer.parameters().expert_share();
  const int64_t n_experts = trainer.parameters().config().n_routed_experts;
  const std::string experts = n_experts == 0 ? "no routed experts"
                              : share.count < 0
                                  ? fmt::format("all {} experts", n_experts)
                                  : fmt::format("experts {}-{}", share.first, share.first + share.count - 1);
  return fmt::format("{}, {:.1f} MiB of weights, gradients and optimizer state", experts,
                     double(trainer.state_bytes()) / 1048576.0);
}

// One line: ranks, threads, hosts, and each rank's share of the batch and of the optimizer state;
// then, on more than one rank, a line per rank: its host, its experts and its memory.
void print_world(const train::Trainer& trainer, const train::TrainerOptions& o) {
  const dist::Communicator& world = trainer.world();
  const std::vector<std::string> hosts = world.allgather(world.host());  // collective: every rank
  const std::vector<std::string> holdings = world.allgather(rank_holdings(trainer));
  if (!world.is_root()) return;
  if (world.size() == 1) {
    fmt::print("world: 1 rank x {} thread{} on {}; {}\n", o.threads, o.threads == 1 ? "" : "s", hosts[0], holdings[0]);
    return;
  }
  std::map<std::string, int> per_host;
  for (const auto& h : hosts) ++per_host[h];
  std::string where;
  for (const auto& [host, n] : per_host) where += fmt::format("{}{} on {}", where.empty() ? "" : ", ", n, host);
  const double held = double(trainer.parameters().values().size());
  const std::string experts =
      o.expert_parallel == 1
          ? ""
          : fmt::format("; expert parallel: groups of {} ranks split the routed experts", o.expert_parallel);
  fmt::print(
      "world: {} ranks x {} thread{} ({}); data parallel, ZeRO-1: each rank trains {} micro-batch{} of {} of the "
      "{} windows a step and keeps the optimizer state of {:.2f} M of the {:.2f} M parameters it holds{}; gradients "
      "travel as {}\n",
      world.size(), o.threads, o.threads == 1 ? "" : "s", where, trainer.local_accum(),
      trainer.local_accum() == 1 ? "" : "es", trainer.local_batch(), o.batch * o.grad_accum,
      double(trainer.dense_shard().size() + trainer.expert_shard().size()) / 1e6, held / 1e6, experts,
      dist::grad_compression_name(o.grad_compression));
  for (int r = 0; r < world.size(); ++r) fmt::print("  rank {} ({}): {}\n", r, hosts[size_t(r)], holdings[size_t(r)]);
}

void print_step(const train::StepReport& r, int64_t steps, bool terminal) {
  std::string val_text = r.val_loss ? fmt::format("  val {:.4f}", *r.val_loss) : "";
  for (const auto& [name, value] : r.val_extra) val_text += fmt::format(" {} {:.3f}", name, value);
  std::string extra_text;  // the data's own measures (DPO's accuracy, margin, ...)
  for (const auto& [name, value] : r.extra) extra_text += fmt::format("  {} {:.3f}", name, value);
  // Under mpirun: what left rank 0 this step, gradients (reduce-scatter) and weights (all-gather).
  const train::CommBytes& sent = r.comm_bytes;
  const std::string comm_text =
      sent.reduce_scatter + sent.all_gather + sent.all_to_all == 0
          ? ""
          : fmt::format("  sent {:.3f} MB grads + {:.3f} MB weights{}, waited {:.3f} s",
                        double(sent.reduce_scatter) / 1e6, double(sent.all_gather) / 1e6,
                        sent.all_to_all == 0 ? "" : fmt::format(" + {:.3f} MB tokens", double(sent.all_to_all) / 1e6),
                        r.comm_wait_s);
  if (terminal) {  // one line that redraws: a bar, the numbers, and the time left
    const int width = 24, filled = int(double(width) * double(r.step + 1) / double(steps));
    fmt::print("\r[{}{}] {}/{}  loss {:.4f}  lr {:.2e}  {:.0f} tok/s  ETA {:.0f}s{}   ",
               std::string(size_t(filled), '#'), std::string(size_t(width - filled), '.'), r.step + 1, steps, r.loss,
               r.lr, r.tokens_per_second, r.seconds_left, val_text);
  } else {
    fmt::print("step {:>5}/{}  loss {:.4f}  lr {:.2e}  grad norm {:.3f}  {:.0f} tok/s{}{}{}\n", r.step + 1, steps,
               r.loss, r.lr, r.grad_norm, r.tokens_per_second, extra_text, comm_text, val_text);
  }
  std::fflush(stdout);
}

void train_on(const train::TrainerOptions& o, const dist::Communicator& world, const DataFactory& data) {
  train::Trainer trainer(o, world, data ? data(o) : nullptr);
  print_world(trainer, o);
  if (!world.is_root()) {
    trainer.run();
    return;
  }
  if (const auto& resumed = trainer.resumed()) {
    // Each newer checkpoint that did not verify costs one warning line.
    for (const auto& [dir, why] : resumed->skipped)
      fmt::print(stderr, "deepmoe: warning: skipping checkpoint {}: {}\n", dir, why);
    fmt::print("resuming from {} (step {})\n", resumed->dir, trainer.first_step());
  }
  if (o.precision != trainer.precision())
    fmt::print(stderr, "deepmoe: note: this CPU has no AVX512-BF16, so --precision bf16 trains in f32\n");
  // Under mpirun stdout is a pty of its own even when mpirun's output goes to a file: one line a step.
  const bool terminal = isatty(STDOUT_FILENO) != 0 && !dist::World::launched_by_mpirun();
  const train::TrainSummary summary =
      trainer.run([&](const train::StepReport& r) { print_step(r, o.steps, terminal); });
  if (terminal) fmt::print("\n");
  // The trained model keeps its starting model's tokenizer (a random one from --config has none).
  if (!o.init_dir.empty()) copy_tokenizer_files_if_present(o.init_dir, o.out_dir);
  fmt::print("trained {} steps in {:.1f} s -> {}\n", o.steps, summary.seconds, o.out_dir);
  if (summary.val_loss)
    fmt::print(
        "validation loss {:.4f}{}\n", *summary.val_loss,
        trainer.data().loss_is_cross_entropy() ? fmt::format(", perplexity {:.1f}", std::exp(*summary.val_loss)) : "");
  fmt::print("memory: activations {:.1f} MiB{}, peak resident {:.1f} MiB\n",
             double(summary.activation_bytes) / 1048576.0, o.recompute ? " (recomputed per layer)" : "", peak_rss_mb());
}

}  // namespace

void run_training(const TrainFlags& flags, const DataFactory& data) {
  dist::World world;
  const dist::Communicator& comm = world.communicator();
  train::TrainerOptions o;
  try {
    o = trainer_options(flags, comm);
    train::check_options(o, comm.size());
  } catch (const Error& e) {
    if (comm.size() == 1) throw;
    // Every rank finds the same mistake in the flags: rank 0 says it once, now (the others may
    // leave first, and mpirun then ends the job), and every rank exits with 1.
    if (comm.is_root()) {
      fmt::print(stderr, "deepmoe: error: {}\n", e.what());
      std::fflush(stderr);
    }
    comm.barrier();
    throw CLI::RuntimeError(1);
  }
  try {
    train_on(o, comm, data);
  } catch (const std::exception& e) {
    if (comm.size() == 1) throw;
    // An error on one rank would leave the others waiting in a collective: it ends the job.
    fmt::print(stderr, "deepmoe: error: rank {} of {}: {}\n", comm.rank(), comm.size(), e.what());
    std::fflush(stderr);
    world.abort_job(1);
    throw;
  }
}

LaunchedRank launched_rank() {
  const char* rank = std::getenv("OMPI_COMM_WORLD_RANK");
  const char* size = std::getenv("OMPI_COMM_WORLD_SIZE");
  return {rank ? std::atoi(rank) : 0, size ? std::max(1, std::atoi(size)) : 1};
}

bool is_first_rank() { return launched_rank().rank == 0; }

std::string reference_model_dir(const std::string& reference, const std::string& init_dir) {
  if (reference.empty() || reference == init_dir) return init_dir;
  const auto config_of = [](const std::string& dir) { return load_config(dir + "/config.json"); };
  const int64_t theirs = config_of(reference).vocab_size, ours = config_of(init_dir).vocab_size;
  if (theirs != ours)
    fail("--reference {} has a vocabulary of {} tokens and {} has {}: the reference must score the same token ids",
         reference, theirs, init_dir, ours);
  return reference;
}

void add_common_training_flags(CLI::App* command, TrainFlags& flags_) {
  TrainFlags* flags = &flags_;
  train::TrainerOptions* o = &flags->trainer;
  command->add_option("--seq", o->seq, "tokens per sequence");
  command->add_option("--batch", o->batch,
                      "sequences per micro-batch (under mpirun the step's batch x grad-accum sequences are split "
                      "over the ranks)");
  command->add_option("--grad-accum", o->grad_accum, "micro-batches per step");
  command->add_option("--steps", o->steps, "optimizer steps");
  command->add_option("--lr", o->lr, "peak learning rate");
  command->add_option("--min-lr", o->min_lr, "floor of the cosine / WSD decay");
  command->add_option("--warmup", o->warmup, "linear warmup steps");
  command
      ->add_option("--schedule", flags->schedule,
                   "constant, cosine, wsd, or plateau (cut the learning rate by --plateau-factor when the "
                   "validation loss has not improved for more than --plateau-patience evaluations)")
      ->check(CLI::IsMember({"constant", "cosine", "wsd", "plateau"}));
  command->add_option("--plateau-factor", o->plateau_factor, "plateau: the learning rate's cut (default 0.5)");
  command->add_option("--plateau-patience", o->plateau_patience,
                      "plateau: evaluations without improvement before a cut (default 2)");
  command->add_option("--optimizer", flags->optimizer, "adamw or lion")->check(CLI::IsMember({"adamw", "lion"}));
  command->add_option("--beta1", flags->beta1, "first-moment decay (default 0.9)");
  command->add_option("--beta2", flags->beta2, "second-moment decay (AdamW 0.999, Lion 0.99)");
  command->add_option("--eps", o->optimizer.eps, "AdamW epsilon");
  command->add_option("--weight-decay", o->optimizer.weight_decay, "decoupled weight decay");
  command->add_option("--clip", o->clip, "global gradient-norm limit (0: off)");
  command->add_option("--aux-loss", o->aux_loss, "weight of the sequence-wise balance loss");
  command->add_option("--ewc", o->ewc_dir,
                      "elastic weight consolidation against forgetting: `deepmoe fisher`'s output directory");
  command->add_option("--ewc-lambda", o->ewc_lambda, "EWC's λ in λ/2 Σ F (θ − θ*)² (default 0)");
  command->add_option("--bias-update", o->bias_update, "aux-loss-free balancing: bias step per training step");
  command->add_option("--seed", o->seed, "seed for the order of the data (and --config initialization)");
  command->add_option("--eval-every", o->eval_every, "validation loss every N steps (needs --val-data)");
  command->add_option("--dump-grads", o->dump_grads_dir, "write step 0's unclipped gradients here (HF names)");
  command->add_option("--save-every", o->save_every, "checkpoint every N steps into OUT/checkpoints (0: never)");
  command->add_option("--keep-last", o->keep_last, "checkpoints to keep");
  command->add_flag("--resume", o->resume, "continue from the newest checkpoint in OUT");
  command
      ->add_option("--precision", flags->precision,
                   "GEMM operands: f32, or bf16 with f32 accumulation and f32 master "
                   "weights (needs AVX512-BF16; f32 otherwise)")
      ->check(CLI::IsMember({"f32", "bf16"}));
  command
      ->add_option("--grad-compression", flags->grad_compression,
                   "what gradients travel as between ranks: none (f32), bf16, or int8 with a scale per 256 "
                   "values; bf16 and int8 keep each rank's rounding error and add it next step")
      ->check(CLI::IsMember({"none", "bf16", "int8"}));
  command
      ->add_option("--comm-overlap", flags->comm_overlap,
                   "on: each layer's gradients start their reduction between ranks as soon as backward finishes "
                   "them; off: all after the whole backward (the same sums; for measuring what overlap buys)")
      ->check(CLI::IsMember({"on", "off"}));
  command
      ->add_option("--expert-parallel", o->expert_parallel,
                   "under mpirun: groups of this many ranks split each MoE layer's routed experts, tokens travel to "
                   "their experts' ranks and back (divides the ranks and the routed experts)")
      ->check(CLI::PositiveNumber);
  command->add_flag("--recompute", o->recompute, "keep only layer inputs and recompute activations in backward");
  command->add_option("--threads", flags->threads, "threads (0: all cores; under mpirun, per rank: its share)");
  command->add_option("--out", o->out_dir, "output directory")->required();
}

}  // namespace deepmoe::cli
