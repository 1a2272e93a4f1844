// Training's view of a model: every tensor in one flat f32 buffer (values) with a parallel
// buffer of gradients, by HF name, in tensor_list order (model/tensor_list.h), so
// ModelWeights::view_f32 lays the layers' weight structs over either buffer. One flat buffer
// makes the optimizer, the global gradient norm and checkpoints single loops over memory.
#pragma once
#include <cstdint>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/thread_pool.h"
#include "model/config.h"
#include "model/tensor_list.h"

namespace deepmoe::train {

struct ParameterTensor {
  std::string name;
  std::vector<int64_t> shape;
  size_t offset = 0, size = 0;
  int64_t layer = -1;     // the decoder layer it belongs to; -1 outside the layers (embedding, final norm, head)
  bool trainable = true;  // false: e_score_correction_bias (moved by the bias update, not the optimizer)
};

class Parameters {
 public:
  // The tensors of `config` (main layers; never MTP), read from the model directory's
  // safetensors in any float dtype and widened to f32. Throws Error naming a missing tensor.
  static Parameters load(const std::string& model_dir);
  explicit Parameters(const Config& config);  // zero-filled, for tests and init

  const Config& config() const { return config_; }
  const std::vector<ParameterTensor>& tensors() const { return tensors_; }
  std::vector<float>& values() { return values_; }
  std::vector<float>& grads() { return grads_; }
  const std::vector<float>& values() const { return values_; }
  const std::vector<float>& grads() const { return grads_; }

  // Pointer to a tensor's values / gradient; nullptr when the config has no such tensor.
  float* value(const std::string& name);
  float* grad(const std::string& name);
  const float* value(const std::string& name) const;
  const ParameterTensor* find(const std::string& name) const;
  // [begin, end) of layer `layer`'s tensors in the flat buffers: the list keeps a layer's tensors
  // together, the embedding before the layers and the final norm and head after them.
  std::pair<size_t, size_t> layer_range(int64_t layer) const { return layer_ranges_[size_t(layer)]; }

  void zero_grads(ThreadPool& pool);
  // Writes config.json and model.safetensors (F32, HF names), atomically. `which` selects the
  // values or the gradients (for --dump-grads).
  enum class Which { Values, Grads };
  void save(const std::string& dir, Which which = Which::Values) const;

 private:
  Config config_;
  std::string config_text_;
  std::vector<ParameterTensor> tensors_;
  std::unordered_map<std::string, size_t> index_;
  std::vector<std::pair<size_t, size_t>> layer_ranges_;
  std::vector<float> values_, grads_;
};

}  // namespace deepmoe::train
