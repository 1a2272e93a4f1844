#include "train/parameters.h"

#include <algorithm>
#include <filesystem>

#include <nlohmann/json.hpp>

#include <sys/mman.h>
#include <unistd.h>

#include "core/dtype.h"
#include "core/error.h"
#include "io/mapped_file.h"
#include "io/safetensors.h"
#include "model/random_init.h"

namespace deepmoe::train {

std::vector<ParameterTensor> Parameters::layout(const Config& config, ExpertShare share) {
  std::vector<ParameterTensor> dense, experts;
  for (const TensorInfo& info : tensor_list(config)) {
    if (info.expert >= 0 && !share.holds(info.expert)) continue;
    ParameterTensor t;
    t.name = info.hf_name;
    t.shape = info.shape;
    t.size = size_t(info.numel());
    t.trainable = info.trainable;
    t.layer = info.layer;
    t.expert = info.expert;
    t.read_as_f32 = info.role == TensorRole::Embedding || info.role == TensorRole::Norm ||
                    info.role == TensorRole::Router || info.role == TensorRole::RouterBias;
    (info.expert >= 0 ? experts : dense).push_back(std::move(t));
  }
  size_t offset = 0;
  for (auto* region : {&dense, &experts})
    for (ParameterTensor& t : *region) {
      t.offset = offset;
      offset += t.size;
    }
  dense.insert(dense.end(), std::make_move_iterator(experts.begin()), std::make_move_iterator(experts.end()));
  return dense;
}

Parameters::Parameters(const Config& config, ExpertShare share)
    : config_(config), share_(share), tensors_(layout(config, share)) {
  const size_t n_layers = size_t(config.layer_count());
  layer_ranges_.assign(n_layers, {0, 0});
  expert_ranges_.assign(n_layers, {0, 0});
  size_t total = 0;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const ParameterTensor& t = tensors_[i];
    index_[t.name] = i;
    total = t.offset + t.size;
    if (t.expert < 0) dense_size_ = total;
    if (t.layer < 0) continue;
    auto& range = (t.expert >= 0 ? expert_ranges_ : layer_ranges_)[size_t(t.layer)];
    if (range.first == range.second) range.first = t.offset;
    if (range.second != 0 && range.second != t.offset)
      fail("{}: layer {}'s tensors are not contiguous in the tensor list", t.name, t.layer);
    range.second = t.offset + t.size;
  }
  // A dense layer's empty expert range sits where the experts region begins.
  for (auto& range : expert_ranges_)
    if (range.first == range.second) range = {dense_size_, dense_size_};
  for (const TensorInfo& info : tensor_list(config)) {
    const ParameterTensor* t = find(info.hf_name);
    list_offsets_.push_back(t ? int64_t(t->offset) : -1);
  }
  values_.assign(total, 0.0f);
  grads_.assign(total, 0.0f);
}

Parameters Parameters::load(const std::string& model_dir, ExpertShare share) {
  const std::string config_path = (std::filesystem::path(model_dir) / "config.json").string();
  Config config = load_config(config_path);
  const CheckpointReader reader(model_dir);
  config.num_nextn_predict_layers =
      mtp_modules_held(config, [&](const std::string& name) { return reader.find(name) != nullptr; });
  if (const auto missing = first_missing_tensor(config, int64_t(reader.tensors().size()),
                                                [&](const TensorInfo& t) { return reader.find(t.hf_name) != nullptr; }))
    fail("{}: missing tensor {}", model_dir, missing->hf_name);
  Parameters p(config, share);
  p.config_text_ = read_text_file(config_path);
  for (const ParameterTensor& t : p.tensors_) {
    const TensorView* view = reader.find(t.name);
    if (view == nullptr) fail("{}: missing tensor {}", model_dir, t.name);
    if (view->shape != t.shape)
      fail("{}: tensor {}: expected shape [{}], found [{}]", view->file, t.name, fmt::join(t.shape, ", "),
           fmt::join(view->shape, ", "));
    if (view->dtype != DType::F32 && view->dtype != DType::BF16 && view->dtype != DType::F16)
      fail("{}: tensor {}: training reads F32, BF16 or F16 weights, found {}", view->file, t.name,
           dtype_name(view->dtype));
    convert_to_f32(view->dtype, view->data, p.values_.data() + t.offset, t.size);
  }
  return p;
}

Parameters Parameters::with_mtp_modules(int64_t depth, uint64_t seed) const {
  Config config = config_;
  config.num_nextn_predict_layers = depth;
  Parameters out(config, share_);
  for (const TensorInfo& info : tensor_list(config)) {
    const ParameterTensor* to = out.find(info.hf_name);
    if (to == nullptr) continue;  // another rank's expert
    if (const ParameterTensor* from = find(info.hf_name))
      std::copy_n(values_.data() + from->offset, from->size, out.values_.data() + to->offset);
    else fill_random(info, seed, out.values_.data() + to->offset);
  }
  if (!config_text_.empty()) {
    nlohmann::json json = nlohmann::json::parse(config_text_);
    json["num_nextn_predict_layers"] = depth;
    out.config_text_ = json.dump(2) + "\n";
  }
  return out;
}

void Parameters::freeze_mtp() {
  for (ParameterTensor& t : tensors_)
    if (t.layer >= config_.num_hidden_layers) t.trainable = false;
}

const ParameterTensor* Parameters::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

float* Parameters::value(const std::string& name) {
  const ParameterTensor* t = find(name);
  return t ? values_.data() + t->offset : nullptr;
}

const float* Parameters::value(const std::string& name) const {
  const ParameterTensor* t = find(name);
  return t ? values_.data() + t->offset : nullptr;
}

float* Parameters::grad(const std::string& name) {
  const ParameterTensor* t = find(name);
  return t ? grads_.data() + t->offset : nullptr;
}

void Parameters::drop_values(size_t begin, size_t end) {
  if (begin >= end || end > values_.size()) return;
  const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
  const uintptr_t first = (reinterpret_cast<uintptr_t>(values_.data() + begin) + page - 1) / page * page;
  const uintptr_t last = reinterpret_cast<uintptr_t>(values_.data() + end) / page * page;
  // Anonymous private memory: MADV_DONTNEED frees the pages, a later read sees zeros. Advice
  // only: when the kernel declines, the memory simply stays.
  if (first < last) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

void Parameters::zero_grads(ThreadPool& pool) {
  const int64_t n = int64_t(grads_.size());
  pool.parallel_for(n, 1 << 16,
                    [&](int64_t begin, int64_t end) { std::fill(grads_.begin() + begin, grads_.begin() + end, 0.0f); });
}

namespace {

void write_tensors(const std::string& path, const std::vector<ParameterTensor>& tensors, const std::vector<float>& data,
                   const std::function<bool(const ParameterTensor&)>& wanted) {
  std::vector<TensorHeader> headers;
  for (const auto& t : tensors)
    if (wanted(t)) headers.push_back({t.name, DType::F32, t.shape});
  SafetensorsWriter writer(path, headers);
  for (const auto& t : tensors)
    if (wanted(t))
      writer.write_next({reinterpret_cast<const uint8_t*>(data.data() + t.offset), t.size * sizeof(float)});
  writer.finish();
}

}  // namespace

void Parameters::save(const std::string& dir, Which which) const {
  std::filesystem::create_directories(dir);
  write_tensors((std::filesystem::path(dir) / "model.safetensors").string(), tensors_,
                which == Which::Values ? values_ : grads_, [](const ParameterTensor&) { return true; });
  save_config(dir);
}

void Parameters::save_tensors(const std::string& path,
                              const std::function<bool(const ParameterTensor&)>& wanted) const {
  write_tensors(path, tensors_, values_, wanted);
}

void Parameters::save_config(const std::string& dir) const {
  if (!config_text_.empty())
    write_file_atomically((std::filesystem::path(dir) / "config.json").string(),
                          {reinterpret_cast<const uint8_t*>(config_text_.data()), config_text_.size()});
}

}  // namespace deepmoe::train
