#include "train/checkpoint.h"

#include <fcntl.h>
#include <stdio.h>  // renameat2

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <tuple>

#include "core/error.h"
#include "io/checksum.h"
#include "io/mapped_file.h"
#include "io/safetensors.h"

namespace deepmoe::train {

namespace fs = std::filesystem;

namespace {

constexpr const char* kPrefix = "step-";

constexpr const char* kMomentKinds[] = {".exp_avg", ".exp_avg_sq"};

int64_t step_of(const fs::path& dir) {
  const std::string name = dir.filename().string();
  if (name.rfind(kPrefix, 0) != 0 || name.find('.') != std::string::npos) return -1;
  try {
    return std::stoll(name.substr(std::char_traits<char>::length(kPrefix)));
  } catch (...) {
    return -1;
  }
}

std::vector<std::pair<int64_t, fs::path>> complete_checkpoints(const std::string& out_dir) {
  std::vector<std::pair<int64_t, fs::path>> found;
  const fs::path root = fs::path(out_dir) / "checkpoints";
  if (!fs::is_directory(root)) return found;
  for (const auto& entry : fs::directory_iterator(root)) {
    const int64_t step = step_of(entry.path());
    if (step >= 0 && fs::exists(entry.path() / "state.json")) found.emplace_back(step, entry.path());
  }
  std::sort(found.begin(), found.end());
  return found;
}

// Moves the finished `partial` to `final_dir`. When step N is saved again (a resume replays the
// steps after the checkpoint it used), the old step-N is swapped out by one atomic
// renameat2(RENAME_EXCHANGE) and removed after: there is no moment without a complete step-N
// for a kill to land in, as there was when the old one was removed first.
void put_in_place(const fs::path& partial, const fs::path& final_dir, const SaveMoment& at_moment) {
  auto moment = [&](const char* name) {
    if (at_moment) at_moment(name);
  };
  if (!fs::exists(fs::symlink_status(final_dir))) {
    fs::rename(partial, final_dir);
    return;
  }
  moment("before swap");
  if (::renameat2(AT_FDCWD, partial.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_EXCHANGE) == 0) {
    moment("after swap");
    fs::remove_all(partial);  // now the old step-N
    return;
  }
  if (errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP)
    fail("cannot swap {} into place: {}", partial.string(), std::strerror(errno));
  // A filesystem without RENAME_EXCHANGE: the old one goes aside first, which leaves a moment
  // without step-N (the older checkpoints still cover it); a leftover .old goes in the cleanup.
  fs::path aside = final_dir;
  aside += ".old";
  fs::remove_all(aside);
  fs::rename(final_dir, aside);
  try {
    fs::rename(partial, final_dir);
  } catch (...) {
    std::error_code ignored;
    fs::rename(aside, final_dir, ignored);
    throw;
  }
  moment("after swap");
  fs::remove_all(aside);
}

// The Config fields that decide the model and its arithmetic, in config.json's words. Two
// models with the same parameter count (another rope_theta, topk_group or routing rule) must not
// pass for each other, so a field added to Config belongs here too.
std::vector<std::pair<std::string, std::string>> config_fields(const Config& c) {
  std::vector<std::pair<std::string, std::string>> fields;
  const auto add = [&](const std::string& name, const auto& value) {
    fields.emplace_back(name, fmt::format("{}", value));
  };
  add("model_type", c.model_type);
  add("vocab_size", c.vocab_size);
  add("hidden_size", c.hidden_size);
  add("intermediate_size", c.intermediate_size);
  add("moe_intermediate_size", c.moe_intermediate_size);
  add("num_hidden_layers", c.num_hidden_layers);
  add("num_attention_heads", c.num_attention_heads);
  add("q_lora_rank", c.q_lora_rank ? fmt::format("{}", *c.q_lora_rank) : "null");
  add("kv_lora_rank", c.kv_lora_rank);
  add("qk_nope_head_dim", c.qk_nope_head_dim);
  add("qk_rope_head_dim", c.qk_rope_head_dim);
  add("v_head_dim", c.v_head_dim);
  add("n_routed_experts", c.n_routed_experts);
  add("n_shared_experts", c.n_shared_experts);
  add("num_experts_per_tok", c.num_experts_per_tok);
  add("first_k_dense_replace", c.first_k_dense_replace);
  add("moe_layer_freq", c.moe_layer_freq);
  add("routed_scaling_factor", c.routed_scaling_factor);
  add("scoring_func", to_string(c.scoring_func));
  add("topk_method", to_string(c.topk_method));
  add("n_group", c.n_group);
  add("topk_group", c.topk_group);
  add("norm_topk_prob", c.norm_topk_prob);
  add("rms_norm_eps", c.rms_norm_eps);
  add("rope_theta", c.rope_theta);
  add("rope_scaling", c.rope_scaling ? "yarn" : "null");
  if (c.rope_scaling) {
    add("rope_scaling.factor", c.rope_scaling->factor);
    add("rope_scaling.original_max_position_embeddings", c.rope_scaling->original_max_position_embeddings);
    add("rope_scaling.beta_fast", c.rope_scaling->beta_fast);
    add("rope_scaling.beta_slow", c.rope_scaling->beta_slow);
    add("rope_scaling.mscale", c.rope_scaling->mscale);
    add("rope_scaling.mscale_all_dim", c.rope_scaling->mscale_all_dim);
  }
  add("tie_word_embeddings", c.tie_word_embeddings);
  add("max_position_embeddings", c.max_position_embeddings);
  add("num_nextn_predict_layers", c.num_nextn_predict_layers);
  add("quantization_config", c.quantization ? c.quantization->format + "/" + c.quantization->activations : "null");
  return fields;
}

void check_same_config(const std::string& dir, const Config& saved, const Config& run) {
  const auto a = config_fields(saved), b = config_fields(run);
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    if (a[i] == b[i]) continue;
    throw ConfigMismatch(fmt::format("{}: a checkpoint of another model: its config.json has {} {}, this run's has {}",
                                     dir, a[i].first, a[i].second, b[i].second));
  }
}

// The optimizer files state.json lists (one process's checkpoints and earlier ones: the one file).
std::vector<std::string> optimizer_files(const nlohmann::json& state, const std::string& state_path) {
  const auto listed = state.find("optimizer_files");
  if (listed == state.end()) return {optimizer_file_of(0, 1)};
  std::vector<std::string> files;
  if (listed->is_array())
    for (const auto& f : *listed)
      if (f.is_string()) files.push_back(f.get<std::string>());
  if (files.empty() || files.size() != listed->size()) fail("{}: 'optimizer_files' is not a list of names", state_path);
  return files;
}

// Every file state.json has a checksum for must still have it, and the weights and every listed
// optimizer file must have one. Checkpoints written before checksums existed carry none and are
// taken as they are.
void verify_checksums(const fs::path& dir, const nlohmann::json& state) {
  const auto checksums = state.find("checksums");
  if (checksums == state.end()) return;
  const std::string state_path = (dir / "state.json").string();
  if (!checksums->is_object()) fail("{}: 'checksums' is not an object", state_path);
  std::vector<std::string> required = optimizer_files(state, state_path);
  required.push_back(checksums->contains("model.safetensors.index.json") ? "model.safetensors.index.json"
                                                                         : "model.safetensors");
  for (const std::string& name : required)
    if (!checksums->contains(name)) fail("{}: no checksum for {}", state_path, name);
  for (const auto& [name, expected] : checksums->items()) {
    if (!expected.is_string() || name.empty() || name.find('/') != std::string::npos || name == "..")
      fail("{}: malformed checksum entry {}", state_path, name);
    const std::string path = (dir / name).string();
    const std::string actual = file_checksum(path);
    if (actual != expected.get<std::string>())
      fail("{}: corrupt (its checksum is {}, state.json says {})", path, actual, expected.get<std::string>());
  }
}

// A moment tensor's name taken apart: the parameter, which moment (0: exp_avg, 1: exp_avg_sq),
// and the first element of the piece; nullopt for a name that is none.
struct MomentName {
  std::string parameter;
  int kind = 0;
  size_t first = 0;
};
std::optional<MomentName> parse_moment_name(const std::string& name) {
  std::string base = name;
  MomentName parsed;
  if (const size_t at = name.rfind('@'); at != std::string::npos) {
    const std::string digits = name.substr(at + 1);
    if (digits.empty() || digits.size() > 18 || digits.find_first_not_of("0123456789") != std::string::npos)
      return std::nullopt;
    parsed.first = size_t(std::stoull(digits));
    base = name.substr(0, at);
  }
  for (int kind : {1, 0}) {  // exp_avg_sq first: exp_avg is its prefix
    const std::string suffix = kMomentKinds[kind];
    if (base.size() > suffix.size() && base.ends_with(suffix)) {
      parsed.parameter = base.substr(0, base.size() - suffix.size());
      parsed.kind = kind;
      return parsed;
    }
  }
  return std::nullopt;
}

}  // namespace

std::string optimizer_file_of(int rank, int ranks) {
  return ranks == 1 ? "optimizer.safetensors" : fmt::format("optimizer-{:05}-of-{:05}.safetensors", rank + 1, ranks);
}

std::string partial_checkpoint_dir(const std::string& out_dir, int64_t step) {
  return (fs::path(out_dir) / "checkpoints" / (kPrefix + std::to_string(step) + ".partial")).string();
}

void begin_checkpoint(const std::string& out_dir, int64_t step) {
  const fs::path partial = partial_checkpoint_dir(out_dir, step);
  fs::remove_all(partial);
  fs::create_directories(partial);
}

void abandon_checkpoint(const std::string& out_dir, int64_t step, const std::exception& why) {
  std::error_code ignored;
  fs::remove_all(partial_checkpoint_dir(out_dir, step), ignored);
  fail("checkpoint {}: {} (the previous checkpoints are kept)",
       (fs::path(out_dir) / "checkpoints" / (kPrefix + std::to_string(step))).string(), why.what());
}

nlohmann::json checksums_of(const std::string& dir, const std::vector<std::string>& files) {
  // Digests of the bytes as the filesystem now returns them: a resume compares against these.
  nlohmann::json checksums = nlohmann::json::object();
  for (const std::string& name : files) checksums[name] = file_checksum((fs::path(dir) / name).string());
  return checksums;
}

void write_moments(const std::string& path, const Parameters& p, std::span<const MomentShard> shards) {
  struct Piece {
    const ParameterTensor* tensor;
    dist::Shard part;  // flat-buffer elements
    const MomentShard* shard;
  };
  std::vector<Piece> pieces;
  for (const MomentShard& shard : shards)
    for (const ParameterTensor& t : p.tensors()) {
      const dist::Shard part = dist::intersect(shard.shard, t.offset, t.offset + t.size);
      if (part.size() > 0) pieces.push_back({&t, part, &shard});
    }
  const bool has_second = !shards.empty() && !shards.front().second.empty();
  std::vector<TensorHeader> headers;
  for (const Piece& piece : pieces)
    for (int kind = 0; kind < (has_second ? 2 : 1); ++kind) {
      const ParameterTensor& t = *piece.tensor;
      if (piece.part.size() == t.size) headers.push_back({t.name + kMomentKinds[kind], DType::F32, t.shape});
      else
        headers.push_back({fmt::format("{}{}@{}", t.name, kMomentKinds[kind], piece.part.begin - t.offset),
                           DType::F32,
                           {int64_t(piece.part.size())}});
    }
  SafetensorsWriter writer(path, headers);
  for (const Piece& piece : pieces)
    for (int kind = 0; kind < (has_second ? 2 : 1); ++kind) {
      const std::span<const float> values = kind == 0 ? piece.shard->first : piece.shard->second;
      const std::span<const float> data =
          values.subspan(piece.part.begin - piece.shard->shard.begin, piece.part.size());
      writer.write_next({reinterpret_cast<const uint8_t*>(data.data()), data.size_bytes()});
    }
  writer.finish();
}

void finish_checkpoint(const std::string& out_dir, int64_t step, nlohmann::json state, const nlohmann::json& checksums,
                       int64_t keep_last, const SaveMoment& at_moment) {
  const fs::path root = fs::path(out_dir) / "checkpoints";
  const fs::path final_dir = root / (kPrefix + std::to_string(step));
  const fs::path partial = partial_checkpoint_dir(out_dir, step);
  try {
    state["checksums"] = checksums;
    const std::string text = state.dump(2);
    write_file_atomically((partial / "state.json").string(),
                          {reinterpret_cast<const uint8_t*>(text.data()), text.size()});
    sync_directory(partial.string());
    put_in_place(partial, final_dir, at_moment);
    sync_directory(root.string());
  } catch (const std::exception& e) {
    std::error_code ignored;
    fs::remove_all(partial, ignored);
    fail("checkpoint {}: {} (the previous checkpoints are kept)", final_dir.string(), e.what());
  }
  // Old checkpoints go by rename first: a kill halfway through deleting one must not leave a
  // directory that still looks complete. Leftovers of earlier kills (.partial, .old) go too.
  auto all = complete_checkpoints(out_dir);
  for (size_t i = 0; i + size_t(std::max<int64_t>(keep_last, 1)) < all.size(); ++i) {
    fs::path doomed = all[i].second;
    doomed += ".old";
    fs::rename(all[i].second, doomed);
  }
  std::error_code ignored;
  for (const auto& entry : fs::directory_iterator(root, ignored)) {
    const std::string name = entry.path().filename().string();
    if (name.ends_with(".old") || (name.ends_with(".partial") && entry.path() != partial))
      fs::remove_all(entry.path(), ignored);
  }
}

void save_checkpoint(const std::string& out_dir, int64_t step, const Parameters& p, const Optimizer& optimizer,
                     const nlohmann::json& state, int64_t keep_last, const SaveMoment& at_moment) {
  const std::string partial = partial_checkpoint_dir(out_dir, step);
  nlohmann::json checksums;
  try {
    begin_checkpoint(out_dir, step);
    p.save(partial);
    const MomentShard whole{optimizer.shard(), optimizer.first_moment(), optimizer.second_moment()};
    write_moments((fs::path(partial) / optimizer_file_of(0, 1)).string(), p, {&whole, 1});
    std::vector<std::string> files = {"model.safetensors", optimizer_file_of(0, 1)};
    if (fs::exists(fs::path(partial) / "config.json")) files.push_back("config.json");
    checksums = checksums_of(partial, files);
  } catch (const std::exception& e) {
    abandon_checkpoint(out_dir, step, e);
  }
  finish_checkpoint(out_dir, step, state, checksums, keep_last, at_moment);
}

nlohmann::json load_checkpoint(const std::string& dir, Parameters& p, Optimizer& optimizer) {
  const std::string state_path = (fs::path(dir) / "state.json").string();
  const nlohmann::json state = nlohmann::json::parse(read_text_file(state_path), nullptr, false);
  if (state.is_discarded() || !state.is_object()) fail("{}: not a JSON object", state_path);
  for (const char* key : {"step", "optimizer_steps"})
    if (!state.contains(key) || !state[key].is_number_integer())
      fail("{}: '{}' is missing or not an integer", state_path, key);
  verify_checksums(dir, state);
  const Parameters saved = Parameters::load(dir, p.expert_share());
  check_same_config(dir, saved.config(), p.config());
  if (saved.values().size() != p.values().size()) fail("{}: the checkpoint's model has a different shape", dir);

  // Every moment is found before anything is copied, so an Error leaves p and optimizer as they
  // were: the pieces of each tensor p holds, from every optimizer file, must cover it exactly.
  struct Found {
    const TensorView* view;
    size_t first;
  };
  const int kinds = optimizer.second_moment().empty() ? 1 : 2;
  std::map<std::pair<std::string, int>, std::vector<Found>> pieces;
  std::vector<std::unique_ptr<MappedFile>> files;
  std::vector<std::vector<TensorView>> views;
  for (const std::string& name : optimizer_files(state, state_path)) {
    files.push_back(std::make_unique<MappedFile>((fs::path(dir) / name).string()));
    views.push_back(parse_safetensors(files.back()->bytes(), files.back()->path()));
    for (const TensorView& v : views.back()) {
      const auto parsed = parse_moment_name(v.name);
      if (!parsed) fail("{}: {} is no optimizer moment", files.back()->path(), v.name);
      if (parsed->kind < kinds && p.find(parsed->parameter))
        pieces[{parsed->parameter, parsed->kind}].push_back({&v, parsed->first});
    }
  }
  for (const ParameterTensor& t : p.tensors())
    for (int kind = 0; kind < kinds; ++kind) {
      const std::string name = t.name + kMomentKinds[kind];
      auto& found = pieces[{t.name, kind}];
      std::sort(found.begin(), found.end(), [](const Found& a, const Found& b) { return a.first < b.first; });
      size_t covered = 0;
      for (const Found& f : found) {
        if (f.view->dtype != DType::F32 || f.first != covered || f.view->n_bytes % sizeof(float) != 0 ||
            f.view->n_bytes / sizeof(float) > t.size - covered)
          fail("{}: optimizer state {} is malformed (a piece at element {})", dir, name, f.first);
        covered += f.view->n_bytes / sizeof(float);
      }
      if (covered != t.size) fail("{}: optimizer state {} is missing or malformed", dir, name);
    }
  p.values() = saved.values();
  for (const auto& [key, found] : pieces) {
    const ParameterTensor* t = p.find(key.first);
    std::vector<float>& buffer = key.second == 0 ? optimizer.first_moment() : optimizer.second_moment();
    for (const Found& f : found) std::memcpy(buffer.data() + t->offset + f.first, f.view->data, f.view->n_bytes);
  }
  optimizer.set_steps_taken(state["optimizer_steps"].get<int64_t>());
  return state;
}

ResumedCheckpoint resume_newest_good(const std::string& out_dir, Parameters& p, Optimizer& optimizer) {
  const auto all = complete_checkpoints(out_dir);
  if (all.empty()) fail("resume: no checkpoint under {}/checkpoints", out_dir);
  ResumedCheckpoint resumed;
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    const std::string dir = it->second.string();
    try {
      resumed.state = load_checkpoint(dir, p, optimizer);
      resumed.dir = dir;
      return resumed;
    } catch (const ConfigMismatch&) {
      throw;
    } catch (const Error& e) {
      resumed.skipped.emplace_back(dir, e.what());
    }
  }
  std::string reasons;
  for (const auto& [dir, why] : resumed.skipped) reasons += (reasons.empty() ? "" : "; ") + why;
  fail("resume: no usable checkpoint under {}/checkpoints: {}", out_dir, reasons);
}

}  // namespace deepmoe::train
