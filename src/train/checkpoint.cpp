#include "train/checkpoint.h"

#include <fcntl.h>
#include <stdio.h>  // renameat2

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <tuple>

#include "core/error.h"
#include "io/checksum.h"
#include "io/mapped_file.h"
#include "io/safetensors.h"

namespace deepmoe::train {

namespace fs = std::filesystem;

namespace {

constexpr const char* kPrefix = "step-";
// The files whose checksums state.json carries; config.json only where the model has one.
constexpr const char* kChecksummed[] = {"model.safetensors", "optimizer.safetensors", "config.json"};

// Moments as tensors named "<parameter>.exp_avg" / ".exp_avg_sq".
void write_moments(const fs::path& path, const Parameters& p, const Optimizer& optimizer) {
  std::vector<TensorHeader> headers;
  const bool has_second = !optimizer.second_moment().empty();
  for (const auto& t : p.tensors()) {
    headers.push_back({t.name + ".exp_avg", DType::F32, t.shape});
    if (has_second) headers.push_back({t.name + ".exp_avg_sq", DType::F32, t.shape});
  }
  SafetensorsWriter writer(path.string(), headers);
  const auto bytes = [](const std::vector<float>& v, const ParameterTensor& t) {
    return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(v.data() + t.offset), t.size * sizeof(float));
  };
  for (const auto& t : p.tensors()) {
    writer.write_next(bytes(optimizer.first_moment(), t));
    if (has_second) writer.write_next(bytes(optimizer.second_moment(), t));
  }
  writer.finish();
}

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

// Every file state.json has a checksum for must still have it. Checkpoints written before
// checksums existed carry none and are taken as they are.
void verify_checksums(const fs::path& dir, const nlohmann::json& state) {
  const auto checksums = state.find("checksums");
  if (checksums == state.end()) return;
  const std::string state_path = (dir / "state.json").string();
  if (!checksums->is_object()) fail("{}: 'checksums' is not an object", state_path);
  for (const char* required : {"model.safetensors", "optimizer.safetensors"})
    if (!checksums->contains(required)) fail("{}: no checksum for {}", state_path, required);
  for (const auto& [name, expected] : checksums->items()) {
    if (!expected.is_string() || name.empty() || name.find('/') != std::string::npos || name == "..")
      fail("{}: malformed checksum entry {}", state_path, name);
    const std::string path = (dir / name).string();
    const std::string actual = file_checksum(path);
    if (actual != expected.get<std::string>())
      fail("{}: corrupt (its checksum is {}, state.json says {})", path, actual, expected.get<std::string>());
  }
}

}  // namespace

void save_checkpoint(const std::string& out_dir, int64_t step, const Parameters& p, const Optimizer& optimizer,
                     const nlohmann::json& state, int64_t keep_last, const SaveMoment& at_moment) {
  const fs::path root = fs::path(out_dir) / "checkpoints";
  const fs::path final_dir = root / (kPrefix + std::to_string(step));
  const fs::path partial = root / (kPrefix + std::to_string(step) + ".partial");
  try {
    fs::create_directories(root);
    fs::remove_all(partial);
    p.save(partial.string());
    write_moments(partial / "optimizer.safetensors", p, optimizer);
    // Digests of the bytes as the filesystem now returns them: a resume compares against these.
    nlohmann::json with_checksums = state;
    for (const char* name : kChecksummed)
      if (fs::exists(partial / name)) with_checksums["checksums"][name] = file_checksum((partial / name).string());
    const std::string text = with_checksums.dump(2);
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

  // Every moment is found before anything is copied, so an Error leaves p and optimizer as they were.
  const MappedFile file((fs::path(dir) / "optimizer.safetensors").string());
  const auto views = parse_safetensors(file.bytes(), file.path());
  std::map<std::string, const TensorView*> by_name;
  for (const auto& v : views) by_name[v.name] = &v;
  std::vector<std::tuple<const TensorView*, std::vector<float>*, const ParameterTensor*>> moments;
  const auto find = [&](const std::string& name, std::vector<float>& buffer, const ParameterTensor& t) {
    const auto it = by_name.find(name);
    if (it == by_name.end() || it->second->dtype != DType::F32 || it->second->n_bytes != t.size * sizeof(float))
      fail("{}: optimizer state {} is missing or malformed", file.path(), name);
    moments.emplace_back(it->second, &buffer, &t);
  };
  for (const auto& t : p.tensors()) {
    find(t.name + ".exp_avg", optimizer.first_moment(), t);
    if (!optimizer.second_moment().empty()) find(t.name + ".exp_avg_sq", optimizer.second_moment(), t);
  }
  p.values() = saved.values();
  for (const auto& [view, buffer, t] : moments) std::memcpy(buffer->data() + t->offset, view->data, view->n_bytes);
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
