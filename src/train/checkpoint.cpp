#include "train/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>

#include "core/error.h"
#include "io/mapped_file.h"
#include "io/safetensors.h"

namespace deepmoe::train {

namespace fs = std::filesystem;

namespace {

constexpr const char* kPrefix = "step-";

void sync_directory(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

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

}  // namespace

void save_checkpoint(const std::string& out_dir, int64_t step, const Parameters& p, const Optimizer& optimizer,
                     const nlohmann::json& state, int64_t keep_last) {
  const fs::path root = fs::path(out_dir) / "checkpoints";
  const fs::path final_dir = root / (kPrefix + std::to_string(step));
  const fs::path partial = root / (kPrefix + std::to_string(step) + ".partial");
  try {
    fs::create_directories(root);
    fs::remove_all(partial);
    p.save(partial.string());
    write_moments(partial / "optimizer.safetensors", p, optimizer);
    const std::string text = state.dump(2);
    write_file_atomically((partial / "state.json").string(), {reinterpret_cast<const uint8_t*>(text.data()), text.size()});
    sync_directory(partial);
    fs::remove_all(final_dir);
    fs::rename(partial, final_dir);
    sync_directory(root);
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

std::optional<std::string> newest_checkpoint(const std::string& out_dir) {
  const auto all = complete_checkpoints(out_dir);
  if (all.empty()) return std::nullopt;
  return all.back().second.string();
}

nlohmann::json load_checkpoint(const std::string& dir, Parameters& p, Optimizer& optimizer) {
  const Parameters saved = Parameters::load(dir);
  if (saved.values().size() != p.values().size()) fail("{}: the checkpoint's model has a different shape", dir);
  p.values() = saved.values();
  const MappedFile file((fs::path(dir) / "optimizer.safetensors").string());
  const auto views = parse_safetensors(file.bytes(), file.path());
  std::map<std::string, const TensorView*> by_name;
  for (const auto& v : views) by_name[v.name] = &v;
  const auto restore = [&](const std::string& name, std::vector<float>& buffer, const ParameterTensor& t) {
    const auto it = by_name.find(name);
    if (it == by_name.end() || it->second->dtype != DType::F32 || it->second->n_bytes != t.size * sizeof(float))
      fail("{}: optimizer state {} is missing or malformed", file.path(), name);
    std::memcpy(buffer.data() + t.offset, it->second->data, it->second->n_bytes);
  };
  for (const auto& t : p.tensors()) {
    restore(t.name + ".exp_avg", optimizer.first_moment(), t);
    if (!optimizer.second_moment().empty()) restore(t.name + ".exp_avg_sq", optimizer.second_moment(), t);
  }
  nlohmann::json state;
  try {
    state = nlohmann::json::parse(read_text_file((fs::path(dir) / "state.json").string()));
  } catch (const nlohmann::json::exception& e) {
    fail("{}/state.json: {}", dir, e.what());
  }
  optimizer.set_steps_taken(state.value("optimizer_steps", int64_t(0)));
  return state;
}

}  // namespace deepmoe::train
