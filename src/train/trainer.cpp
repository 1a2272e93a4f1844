#include "train/trainer.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <utility>

#include "core/error.h"
#include "io/mapped_file.h"
#include "io/safetensors.h"
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
  if (o.schedule == Schedule::Plateau) {
    // (That there is validation data is checked when the run starts: SFT and DPO bring their own.)
    if (o.eval_every < 1) fail("--schedule plateau needs --eval-every N (the validation loss it watches)");
    if (!(o.plateau_factor > 0 && o.plateau_factor < 1))
      fail("--plateau-factor must be in (0, 1), found {}", o.plateau_factor);
    if (o.plateau_patience < 0) fail("--plateau-patience must be >= 0, found {}", o.plateau_patience);
  }
  if (o.mtp_depth < 0 || o.mtp_depth > 64) fail("--mtp-depth must be in [0, 64], found {}", o.mtp_depth);
  if (o.mtp_depth > 0 && !(o.mtp_weight > 0 && std::isfinite(o.mtp_weight)))
    fail("--mtp-weight must be a positive number, found {}", o.mtp_weight);
  if (o.mtp_depth >= o.seq)
    fail("--mtp-depth {} needs --seq above it (depth k predicts k + 1 tokens ahead)", o.mtp_depth);
  if (o.expert_parallel < 1 || ranks % o.expert_parallel != 0)
    fail("--expert-parallel {} must divide the {} ranks", o.expert_parallel, ranks);
  if (o.expert_parallel == 1) return;
  if (!o.dump_grads_dir.empty())
    fail("--dump-grads needs every expert on every rank: run it without --expert-parallel");
  const Config c =
      load_config(o.config_path.empty() ? (std::filesystem::path(o.init_dir) / "config.json").string() : o.config_path);
  if (c.n_routed_experts == 0 || c.n_routed_experts % o.expert_parallel != 0)
    fail("--expert-parallel {} must divide the model's {} routed experts", o.expert_parallel, c.n_routed_experts);
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

// The routed experts this rank holds: block `block` of E (check_options made sure E divides them).
ExpertShare expert_share_of(const std::string& model_dir, int expert_parallel, int block) {
  if (expert_parallel == 1) return {};
  const Config c = load_config((std::filesystem::path(model_dir) / "config.json").string());
  const int64_t per_rank = c.n_routed_experts / expert_parallel;
  return {block * per_rank, per_rank};
}

// The starting weights this rank holds (block `block` of the experts under expert parallelism).
// The MTP modules --mtp-depth asks for are added when the model lacks them, and frozen without it.
Parameters load_parameters(const TrainerOptions& o, const dist::Communicator& world, int block) {
  const std::string model_dir = prepare_model_dir(o, world);
  Parameters p = Parameters::load(model_dir, expert_share_of(model_dir, o.expert_parallel, block));
  const int64_t held = p.config().num_nextn_predict_layers;
  if (o.mtp_depth == 0) p.freeze_mtp();
  else if (held > o.mtp_depth)
    fail("--mtp-depth {}: {} holds {} multi-token-prediction modules; train them all (--mtp-depth {})", o.mtp_depth,
         model_dir, held, held);
  else if (held < o.mtp_depth) p = p.with_mtp_modules(o.mtp_depth, o.seed);
  return p;
}

// A rank's error-feedback residual in a checkpoint.
std::string residual_file(int rank, int ranks) {
  return fmt::format("residual-{:05}-of-{:05}.safetensors", rank + 1, ranks);
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
  for (const auto& [name, value] : r.extra) line[name] = value;
  for (const auto& [name, value] : r.val_extra) line["val_" + name] = value;
  line["comm_bytes"] = {{"reduce_scatter", r.comm_bytes.reduce_scatter},
                        {"all_gather", r.comm_bytes.all_gather},
                        {"all_to_all", r.comm_bytes.all_to_all}};
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

Trainer::Trainer(TrainerOptions options, std::unique_ptr<TrainingData> data)
    : Trainer(std::move(options), nullptr, std::move(data)) {}

Trainer::Trainer(TrainerOptions options, const dist::Communicator& world, std::unique_ptr<TrainingData> data)
    : Trainer(std::move(options), &world, std::move(data)) {}

Trainer::Trainer(TrainerOptions options, const dist::Communicator* world, std::unique_ptr<TrainingData> data)
    : solo_(dist::Communicator::solo()),
      world_(world ? *world : solo_),
      options_(checked(std::move(options), world_.size())),
      expert_group_(world_.split(world_.rank() / options_.expert_parallel, world_.rank())),
      expert_replicas_(world_.split(world_.rank() % options_.expert_parallel, world_.rank())),
      expert_exchange_(expert_group_),
      p_(load_parameters(options_, world_, expert_group_.rank())),
      data_(data ? std::move(data)
                 : std::make_unique<TokenWindowData>(options_.data_path, options_.val_data_path, options_.seq,
                                                     options_.batch, options_.order, options_.seed)),
      dense_parallel_(world_, p_.dense_size(), options_.grad_compression),
      expert_parallel_(expert_replicas_, p_.values().size() - p_.dense_size(), options_.grad_compression),
      local_batch_(local_batch_of(options_, world_.size())),
      local_accum_(options_.batch * options_.grad_accum / world_.size() / local_batch_),
      dense_optimizer_(p_, options_.optimizer, dense_parallel_.shard()),
      expert_optimizer_(
          p_, options_.optimizer,
          {p_.dense_size() + expert_parallel_.shard().begin, p_.dense_size() + expert_parallel_.shard().end}),
      precision_(usable_precision(options_.precision)),
      sharded_master_(precision_ == GemmPrecision::BF16 && world_.size() > 1),
      graph_(p_.config(), options_.threads, precision_, options_.recompute,
             options_.expert_parallel > 1 ? &expert_exchange_ : nullptr, sharded_master_) {
  if (options_.mtp_depth > 0) graph_.set_mtp_weight(options_.mtp_weight);
  for (const ParameterTensor& t : p_.tensors()) {
    if (!t.read_as_f32) continue;
    if (!f32_ranges_.empty() && f32_ranges_.back().second == t.offset) f32_ranges_.back().second = t.offset + t.size;
    else f32_ranges_.emplace_back(t.offset, t.offset + t.size);
  }
  if (!options_.ewc_dir.empty()) ewc_ = std::make_unique<ElasticPenalty>(options_.ewc_dir, p_, options_.ewc_lambda);
  data_->attach(p_);
  if (options_.resume) resume();
  if (sharded_master_) keep_master_shards();
}

void Trainer::keep_master_shards() {
  // The bf16 copy from the whole f32 values, once; then only what this rank updates (its shards)
  // and what the graph reads in f32 (all dense) stay.
  graph_.refresh_bf16(p_, 0, p_.values().size());
  std::vector<std::pair<size_t, size_t>> keep = f32_ranges_;
  keep.emplace_back(dense_shard().begin, dense_shard().end);
  keep.emplace_back(expert_shard().begin, expert_shard().end);
  std::sort(keep.begin(), keep.end());
  size_t from = 0;
  for (const auto& [begin, end] : keep) {
    if (begin > from) p_.drop_values(from, begin);
    from = std::max(from, end);
  }
  p_.drop_values(from, p_.values().size());
}

void Trainer::resume() {
  // Checkpoints hold the whole model and optimizer state (any number of ranks and any expert
  // parallelism can resume them): each rank reads what it holds, by name, and keeps its shards.
  Optimizer whole(p_, options_.optimizer);
  resumed_ = resume_newest_good(options_.out_dir, p_, whole);
  dense_optimizer_.copy_shard_from(whole);
  expert_optimizer_.copy_shard_from(whole);
  restore_residual(resumed_->dir, resumed_->state);
  const nlohmann::json run = run_settings(options_);
  const nlohmann::json made_with = resumed_->state.value("run", nlohmann::json());
  if (made_with != run)
    fail("--resume: {} was made with different settings ({}), not {}", resumed_->dir, made_with.dump(), run.dump());
  first_step_ = resumed_->state.value("step", int64_t(0));
  if (const auto it = resumed_->state.find("plateau"); it != resumed_->state.end()) {
    plateau_.best = it->value("best", 0.0);
    plateau_.seen = it->value("seen", false);
    plateau_.bad = it->value("bad", int64_t(0));
    plateau_.cuts = it->value("cuts", int64_t(0));
  }
}

void Trainer::gather_weights(double& wait_seconds) {
  const size_t split = p_.dense_size();
  const std::span<float> values(p_.values());
  if (!sharded_master_) {
    timed(wait_seconds, [&] {
      dense_parallel_.all_gather(values.first(split));
      expert_parallel_.all_gather(values.subspan(split));
    });
    return;
  }
  // ZeRO-1 with bf16 weights: the shards' new bf16 copies go to every rank (2 bytes an element),
  // and of the f32 values only those the graph reads in f32.
  graph_.refresh_bf16(p_, dense_shard().begin, dense_shard().end);
  graph_.refresh_bf16(p_, expert_shard().begin, expert_shard().end);
  const std::span<uint16_t> bits = graph_.bf16_weights();
  timed(wait_seconds, [&] {
    dense_parallel_.all_gather(bits.first(split));
    expert_parallel_.all_gather(bits.subspan(split));
    for (const auto& [begin, end] : f32_ranges_) dense_parallel_.all_gather(values.first(split), begin, end);
  });
}

Trainer::~Trainer() = default;

void Trainer::sum_over_ranks(std::map<std::string, double>& values, double& wait_seconds) {
  // Every rank's data names the same measures (a rank without batches adds zeros).
  if (world_.size() == 1 || values.empty()) return;
  std::vector<double> sums, maxima;
  for (const auto& [name, value] : values) (is_max_metric(name) ? maxima : sums).push_back(value);
  timed(wait_seconds, [&] {
    world_.allreduce_sum(sums);
    world_.allreduce_max(maxima);
  });
  size_t s = 0, m = 0;
  for (auto& [name, value] : values) value = is_max_metric(name) ? maxima[m++] : sums[s++];
}

double Trainer::validation_loss(std::map<std::string, double>& extra) {
  // The validation batches dealt out to the ranks in turn. Each batch's loss sits at its own
  // place, so the sum over ranks adds zeros and the total is the one a single process computes,
  // bit for bit.
  const int64_t batches = data_->validation_batches();
  // Under expert parallelism every rank of an expert group runs the same number of forward
  // passes (each is collective over the group): a rank out of batches repeats one and drops it.
  std::vector<double> losses(size_t(batches), 0.0);
  const int64_t passes =
      options_.expert_parallel > 1 ? (batches + world_.size() - 1) / world_.size() * world_.size() : batches;
  for (int64_t b = world_.rank(); b < passes; b += world_.size()) {
    const MicroBatch m = data_->validation_batch(b % batches);
    const double loss =
        graph_.run(p_, m.inputs, m.targets, m.rows, options_.seq, 0.0, false, 1.0f, {}, m.objective).cross_entropy;
    if (b < batches) {
      losses[size_t(b)] = loss * m.weight;
      if (m.metrics)
        for (const auto& [name, value] : *m.metrics) merge_metric(extra, name, value);
    }
  }
  world_.allreduce_sum(losses);
  double ignored = 0;
  sum_over_ranks(extra, ignored);
  double total = 0;
  for (const double loss : losses) total += loss;
  return total;
}

Trainer::ShardGrads Trainer::forward_backward(int64_t step, StepReport& report, ExpertLoads& loads) {
  const TrainerOptions& o = options_;
  // This rank's windows: a contiguous share of the step's batch × grad_accum, in rank order.
  const int64_t first_window = step * o.batch * o.grad_accum + world_.rank() * local_batch_ * local_accum_;
  // The last micro-batch finishes the gradients: its backward starts their reduction, or without
  // overlap notes the ranges for after it.
  ready_ranges_.clear();
  const size_t split = p_.dense_size();
  const std::span<float> all(p_.grads());
  const auto reduce_range = [&](size_t begin, size_t end) {
    if (begin >= split) expert_parallel_.reduce_range(all.subspan(split), begin - split, end - split);
    else dense_parallel_.reduce_range(all.first(split), begin, end);
  };
  const GradientsReady reduce = [&](size_t begin, size_t end) {
    if (o.comm_overlap) reduce_range(begin, end);
    else ready_ranges_.emplace_back(begin, end);
  };
  double losses[3] = {0, 0, 0};  // loss, cross-entropy, MTP cross-entropy
  for (int64_t micro = 0; micro < local_accum_; ++micro) {
    // Weighted by its part of the step, the micro-batches of all ranks add up to the step's loss.
    const MicroBatch m = data_->train_batch(first_window + micro * local_batch_, local_batch_, o.batch * o.grad_accum);
    // The objective weighted as the data says, the balance loss by the micro-batch's share of the step.
    const double aux = o.aux_loss * m.share;
    const StepLoss r = graph_.run(p_, m.inputs, m.targets, m.rows, o.seq, aux, true, float(m.weight),
                                  micro + 1 == local_accum_ ? reduce : GradientsReady(), m.objective);
    losses[0] += r.cross_entropy * m.weight + aux * r.balance + o.mtp_weight * r.mtp_cross_entropy * m.weight;
    losses[1] += r.cross_entropy * m.weight;
    losses[2] += r.mtp_cross_entropy * m.weight;
    if (m.metrics)
      for (const auto& [name, value] : *m.metrics) merge_metric(report.extra, name, value);
    loads.resize(r.expert_counts.size());
    for (size_t l = 0; l < r.expert_counts.size(); ++l) {
      loads[l].resize(r.expert_counts[l].size());
      for (size_t i = 0; i < r.expert_counts[l].size(); ++i) loads[l][i] += r.expert_counts[l][i];
    }
  }
  for (const auto& [begin, end] : ready_ranges_) reduce_range(begin, end);
  ShardGrads grads;
  timed(report.comm_wait_s, [&] {
    grads.dense = dense_parallel_.finish(all.first(split));
    grads.experts = expert_parallel_.finish(all.subspan(split));
  });
  timed(report.comm_wait_s, [&] { world_.allreduce_sum(losses); });
  sum_over_ranks(report.extra, report.comm_wait_s);
  report.loss = losses[0];
  report.cross_entropy = losses[1];
  if (o.mtp_depth > 0) report.extra["mtp_loss"] = losses[2];
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

void Trainer::dump_gradients(ShardGrads grads) {
  // The summed gradients are sharded over the ranks: gathered whole into the gradient buffer
  // (recomputed from zero next step anyway) for rank 0 to write. check_options keeps expert
  // parallelism out, so every rank holds every expert.
  const size_t split = p_.dense_size();
  const std::span<float> all(p_.grads());
  if (world_.size() > 1) {
    std::copy(grads.dense.begin(), grads.dense.end(), all.begin() + ptrdiff_t(dense_shard().begin));
    std::copy(grads.experts.begin(), grads.experts.end(), all.begin() + ptrdiff_t(expert_shard().begin));
    dense_parallel_.all_gather(all.first(split));
    expert_parallel_.all_gather(all.subspan(split));
  }
  if (world_.is_root()) p_.save(options_.dump_grads_dir, Parameters::Which::Grads);
}

std::vector<std::string> Trainer::write_model_files(const std::string& dir) {
  const int blocks = options_.expert_parallel, rank = world_.rank();
  const bool root = world_.is_root();
  // Without expert parallelism rank 0 writes model.safetensors; with it, each expert block's first
  // holder (world rank = block) writes the block's shard, rank 0's holding the dense region too,
  // and rank 0 lists them in the index.
  const auto shard_name = [&](int block) {
    return blocks == 1 ? std::string("model.safetensors")
                       : fmt::format("model-{:05}-of-{:05}.safetensors", block + 1, blocks);
  };
  const bool writes = rank < blocks;
  const auto in_my_file = [&](const ParameterTensor& t) { return writes && (t.expert >= 0 || rank == 0); };
  std::optional<SafetensorsWriter> writer;
  if (writes) {
    std::vector<TensorHeader> headers;
    for (const ParameterTensor& t : p_.tensors())
      if (in_my_file(t)) headers.push_back({t.name, DType::F32, t.shape});
    writer.emplace((std::filesystem::path(dir) / shard_name(rank)).string(), headers);
  }
  // Tensor by tensor, in the buffer's order (the dense region, then the experts). With sharded
  // master weights a tensor's f32 values are spread over the shards: its owners send their parts to
  // the writer (rank 0 of the dense region's ranks, or of the block's replicas), one tensor at a
  // time, so no rank ever holds more than one whole tensor it does not own.
  const size_t split = p_.dense_size();
  const std::span<const float> values(p_.values());
  std::vector<float> gathered;
  for (const ParameterTensor& t : p_.tensors()) {
    std::span<const float> data = values.subspan(t.offset, t.size);
    if (sharded_master_ && !t.read_as_f32) {
      const bool expert = t.expert >= 0;
      const size_t base = expert ? split : 0;
      gathered.resize(in_my_file(t) ? t.size : 0);
      (expert ? expert_parallel_ : dense_parallel_)
          .gather_range_to_root(values.subspan(base), t.offset - base, t.offset - base + t.size, gathered);
      data = gathered;
    }
    if (in_my_file(t)) writer->write_next({reinterpret_cast<const uint8_t*>(data.data()), data.size_bytes()});
  }
  std::vector<std::string> files;
  if (writer) {
    writer->finish();
    files.push_back(shard_name(rank));
  }
  if (!root) return files;
  if (blocks > 1) {
    nlohmann::json weight_map = nlohmann::json::object();
    const int64_t per_block = p_.expert_share().count;
    for (int block = 0; block < blocks; ++block)
      for (const ParameterTensor& t : Parameters::layout(p_.config(), {block * per_block, per_block}))
        if (t.expert >= 0 || block == 0) weight_map[t.name] = shard_name(block);
    const std::string index =
        nlohmann::json({{"metadata", nlohmann::json::object()}, {"weight_map", weight_map}}).dump(2);
    write_file_atomically((std::filesystem::path(dir) / "model.safetensors.index.json").string(),
                          {reinterpret_cast<const uint8_t*>(index.data()), index.size()});
    files.push_back("model.safetensors.index.json");
  }
  p_.save_config(dir);
  if (std::filesystem::exists(std::filesystem::path(dir) / "config.json")) files.push_back("config.json");
  return files;
}

void Trainer::save(int64_t step) {
  const int n = world_.size();
  const std::string dir = partial_checkpoint_dir(options_.out_dir, step);
  const bool residual = !dense_parallel_.residual().empty();
  if (world_.is_root()) {
    try {
      begin_checkpoint(options_.out_dir, step);
    } catch (const std::exception& e) {
      abandon_checkpoint(options_.out_dir, step, e);
    }
  }
  world_.barrier();
  // Every rank writes its files: the weights it is the writer of, its optimizer shards, and with
  // compression its error-feedback residual (which only the same world size and E can resume). A
  // rank that cannot (a full disk) throws; under mpirun that ends the job, before anything is swapped in.
  std::vector<std::string> files;
  nlohmann::json my_checksums;
  try {
    files = write_model_files(dir);
    const std::string optimizer_file = optimizer_file_of(world_.rank(), n);
    const MomentShard shards[2] = {
        {dense_shard(), dense_optimizer_.first_moment(), dense_optimizer_.second_moment()},
        {expert_shard(), expert_optimizer_.first_moment(), expert_optimizer_.second_moment()}};
    write_moments((std::filesystem::path(dir) / optimizer_file).string(), p_, shards);
    files.push_back(optimizer_file);
    if (residual) {
      const std::string name = residual_file(world_.rank(), n);
      const std::span<const float> parts[2] = {dense_parallel_.residual(), expert_parallel_.residual()};
      std::vector<TensorHeader> headers = {{"dense", DType::F32, {int64_t(parts[0].size())}},
                                           {"experts", DType::F32, {int64_t(parts[1].size())}}};
      SafetensorsWriter writer((std::filesystem::path(dir) / name).string(), headers);
      for (const auto part : parts)
        writer.write_next({reinterpret_cast<const uint8_t*>(part.data()), part.size_bytes()});
      writer.finish();
      files.push_back(name);
    }
    my_checksums = checksums_of(dir, files);
  } catch (const std::exception& e) {
    abandon_checkpoint(options_.out_dir, step, e);
  }
  const std::vector<std::string> checksums = world_.allgather(my_checksums.dump());
  if (!world_.is_root()) return;
  nlohmann::json state = {
      {"step", step}, {"optimizer_steps", dense_optimizer_.steps_taken()}, {"run", run_settings(options_)}};
  if (options_.schedule == Schedule::Plateau)
    state["plateau"] = {
        {"best", plateau_.best}, {"seen", plateau_.seen}, {"bad", plateau_.bad}, {"cuts", plateau_.cuts}};
  nlohmann::json all_checksums = nlohmann::json::object();
  for (const std::string& text : checksums) all_checksums.update(nlohmann::json::parse(text));
  std::vector<std::string> optimizer_files;
  for (int r = 0; r < n; ++r) optimizer_files.push_back(optimizer_file_of(r, n));
  state["optimizer_files"] = optimizer_files;
  if (residual) state["residual"] = residual_world();
  finish_checkpoint(options_.out_dir, step, state, all_checksums, options_.keep_last);
}

nlohmann::json Trainer::residual_world() const {
  return {{"ranks", world_.size()},
          {"expert_parallel", options_.expert_parallel},
          {"grad_compression", dist::grad_compression_name(options_.grad_compression)}};
}

void Trainer::restore_residual(const std::string& checkpoint_dir, const nlohmann::json& state) {
  const auto saved = state.find("residual");
  if (saved == state.end() || dense_parallel_.residual().empty()) return;
  if (*saved != residual_world()) return;  // another world: its ranks' debts are not this world's; start from none
  const MappedFile file((std::filesystem::path(checkpoint_dir) / residual_file(world_.rank(), world_.size())).string());
  const std::vector<TensorView> views = parse_safetensors(file.bytes(), file.path());
  const auto restore = [&](const char* name, DataParallel& dp) {
    for (const TensorView& v : views)
      if (v.name == name && v.dtype == DType::F32 && v.n_bytes == dp.residual().size_bytes())
        return dp.restore_residual({reinterpret_cast<const float*>(v.data), dp.residual().size()});
    fail("{}: residual {} is missing or malformed", file.path(), name);
  };
  restore("dense", dense_parallel_);
  restore("experts", expert_parallel_);
}

size_t Trainer::state_bytes() const {
  // The f32 values this rank keeps: all, or with sharded master weights its shards and the
  // tensors read in f32; plus the bf16 copy the graph runs on.
  size_t values = p_.values().size();
  if (sharded_master_) {
    values = dense_shard().size() + expert_shard().size();
    for (const auto& [begin, end] : f32_ranges_)
      values += (end - begin) - dist::intersect(dense_shard(), begin, end).size();
  }
  const size_t bf16_bytes = precision_ == GemmPrecision::BF16 ? p_.values().size() * sizeof(uint16_t) : 0;
  const size_t floats = values + p_.grads().size() + dense_optimizer_.first_moment().size() +
                        dense_optimizer_.second_moment().size() + expert_optimizer_.first_moment().size() +
                        expert_optimizer_.second_moment().size() + dense_parallel_.buffer_floats() +
                        expert_parallel_.buffer_floats();
  return floats * sizeof(float) + bf16_bytes;
}

TrainSummary Trainer::run(const std::function<void(const StepReport&)>& on_step) {
  const TrainerOptions& o = options_;
  ScheduleOptions schedule;
  schedule.kind = o.schedule;
  schedule.lr = o.lr;
  schedule.min_lr = o.min_lr;
  schedule.warmup = o.warmup;
  schedule.total_steps = o.steps;
  schedule.plateau_factor = o.plateau_factor;
  schedule.plateau_patience = o.plateau_patience;
  if (o.schedule == Schedule::Plateau && data_->validation_batches() == 0)
    fail("--schedule plateau cuts the learning rate when the validation loss stops improving: it needs --val-data");

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
  for (int64_t step = first_step_; step < o.steps; ++step) {
    const auto step_start = std::chrono::steady_clock::now();
    p_.zero_grads(pool);
    StepReport report;
    report.step = step;
    ExpertLoads loads;
    const ShardGrads grads = forward_backward(step, report, loads);
    if (ewc_) {  // each element's term on the rank that owns it, summed over the world
      double penalty[1] = {ewc_->add_to(p_, dense_shard(), grads.dense) +
                           ewc_->add_to(p_, expert_shard(), grads.experts)};
      timed(report.comm_wait_s, [&] { world_.allreduce_sum(penalty); });
      report.loss += penalty[0];
      report.extra["ewc"] = penalty[0];
    }
    if (!std::isfinite(report.loss))
      fail("step {}: the loss is {} (diverged; try a lower --lr or --clip)", step, report.loss);
    if (step == 0 && !o.dump_grads_dir.empty()) dump_gradients(grads);
    // Every element has one owner in the world (the expert blocks partition the experts), so the
    // sum over the ranks of their shards' squares is the global norm.
    double squares[1] = {squared_gradient_norm(pool, p_, dense_shard(), grads.dense) +
                         squared_gradient_norm(pool, p_, expert_shard(), grads.experts)};
    timed(report.comm_wait_s, [&] { world_.allreduce_sum(squares); });
    report.grad_norm = std::sqrt(squares[0]);
    const double clip = clip_coefficient(report.grad_norm, o.clip);
    scale_gradients(pool, p_, dense_shard(), grads.dense, clip);
    scale_gradients(pool, p_, expert_shard(), grads.experts, clip);
    report.lr = learning_rate(schedule, step, plateau_);
    // Data that could not be scored (a reward program that failed) skips the update on every
    // rank (the count is summed over them): the weights and the optimizer state stay as they were.
    const auto skipped = report.extra.find("skipped");
    if (skipped == report.extra.end() || skipped->second == 0) {
      dense_optimizer_.step(pool, p_, grads.dense, report.lr);
      expert_optimizer_.step(pool, p_, grads.experts, report.lr);
      gather_weights(report.comm_wait_s);
      if (o.bias_update > 0) update_balance_bias(p_.config(), p_, loads, o.bias_update);
    }

    report.tokens_per_second = double(o.batch * o.seq * o.grad_accum) / seconds_since(step_start);
    report.comm_bytes = dense_parallel_.take_bytes();
    report.comm_bytes += expert_parallel_.take_bytes();
    report.comm_bytes.all_to_all = expert_exchange_.take_bytes();
    report.comm_wait_s += expert_exchange_.take_seconds();
    for (const auto& load : loads) report.expert_load.push_back(expert_load_stats(load));
    if (data_->validation_batches() > 0 && o.eval_every > 0 &&
        ((step + 1) % o.eval_every == 0 || step + 1 == o.steps)) {
      report.val_loss = validation_loss(report.val_extra);
      if (o.schedule == Schedule::Plateau) plateau_.observe(*report.val_loss, o.plateau_patience);
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
  // The trained model: one form only (a resumed run may have written the other before).
  if (world_.is_root()) {
    const std::filesystem::path out(o.out_dir);
    std::error_code ignored;
    if (o.expert_parallel == 1) {
      std::filesystem::remove(out / "model.safetensors.index.json", ignored);
    } else {
      std::filesystem::remove(out / "model.safetensors", ignored);
    }
  }
  world_.barrier();
  write_model_files(o.out_dir);
  if (world_.is_root()) write_plots(o.out_dir);
  summary.seconds = seconds_since(start);
  summary.activation_bytes = graph_.activation_bytes();
  return summary;
}

}  // namespace deepmoe::train
