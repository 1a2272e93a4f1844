#include "train/parameters.h"

#include <algorithm>
#include <filesystem>

#include "core/dtype.h"
#include "core/error.h"
#include "io/mapped_file.h"
#include "io/safetensors.h"

namespace deepmoe::train {

Parameters::Parameters(const Config& config) : config_(config) {
  size_t offset = 0;
  layer_ranges_.assign(size_t(config.num_hidden_layers), {0, 0});
  for (const TensorInfo& info : tensor_list(config)) {
    ParameterTensor t;
    t.name = info.hf_name;
    t.shape = info.shape;
    t.size = size_t(info.numel());
    t.offset = offset;
    t.trainable = info.trainable;
    t.layer = info.layer;
    if (t.layer >= 0) {
      auto& range = layer_ranges_[size_t(t.layer)];
      if (range.first == range.second) range.first = offset;
      if (range.second != 0 && range.second != offset)
        fail("{}: layer {}'s tensors are not contiguous in the tensor list", t.name, t.layer);
      range.second = offset + t.size;
    }
    offset += t.size;
    index_[t.name] = tensors_.size();
    tensors_.push_back(std::move(t));
  }
  values_.assign(offset, 0.0f);
  grads_.assign(offset, 0.0f);
}

Parameters Parameters::load(const std::string& model_dir) {
  const std::string config_path = (std::filesystem::path(model_dir) / "config.json").string();
  const Config config = load_config(config_path);
  const CheckpointReader reader(model_dir);
  if (const auto missing = first_missing_tensor(config, int64_t(reader.tensors().size()),
                                                [&](const TensorInfo& t) { return reader.find(t.hf_name) != nullptr; }))
    fail("{}: missing tensor {}", model_dir, missing->hf_name);
  Parameters p(config);
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

void Parameters::zero_grads(ThreadPool& pool) {
  const int64_t n = int64_t(grads_.size());
  pool.parallel_for(n, 1 << 16,
                    [&](int64_t begin, int64_t end) { std::fill(grads_.begin() + begin, grads_.begin() + end, 0.0f); });
}

void Parameters::save(const std::string& dir, Which which) const {
  std::filesystem::create_directories(dir);
  std::vector<TensorHeader> headers;
  for (const auto& t : tensors_) headers.push_back({t.name, DType::F32, t.shape});
  SafetensorsWriter writer((std::filesystem::path(dir) / "model.safetensors").string(), headers);
  const std::vector<float>& data = which == Which::Values ? values_ : grads_;
  for (const auto& t : tensors_)
    writer.write_next({reinterpret_cast<const uint8_t*>(data.data() + t.offset), t.size * sizeof(float)});
  writer.finish();
  if (!config_text_.empty())
    write_file_atomically((std::filesystem::path(dir) / "config.json").string(),
                          {reinterpret_cast<const uint8_t*>(config_text_.data()), config_text_.size()});
}

}  // namespace deepmoe::train
