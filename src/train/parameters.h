// Training's view of a model: every tensor in one flat f32 buffer (values) with a parallel
// buffer of gradients, by HF name, so ModelWeights::view_f32 lays the layers' weight structs over
// either buffer. One flat buffer makes the optimizer, the global gradient norm and checkpoints
// single loops over memory.
//
// The buffer has two regions, each in tensor_list order (model/tensor_list.h): the dense region
// (everything but the routed experts: embedding, attention, norms, routers, shared experts, dense
// MLPs, head), which every rank holds alike, then the routed experts this rank holds (all of them
// but under expert parallelism). Data parallelism reduces the dense region over all ranks and the
// expert region over the ranks holding the same experts.
#pragma once
#include <cstdint>
#include <functional>
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
  int64_t layer = -1;   // the decoder layer it belongs to; -1 outside the layers (embedding, final norm, head)
  int64_t expert = -1;  // the routed expert it belongs to; -1 for the dense region
  // bf16 training reads its f32 values (norms, routers and their biases, the embedding's lookup);
  // every other tensor it reads as the bf16 copy.
  bool read_as_f32 = false;
  bool trainable = true;  // false: e_score_correction_bias (moved by the bias update, not the optimizer)
};

// The routed experts a rank holds: [first, first + count) of every MoE layer's; all by default.
struct ExpertShare {
  int64_t first = 0, count = -1;  // count < 0: all
  bool holds(int64_t expert) const { return expert >= first && (count < 0 || expert < first + count); }
};

class Parameters {
 public:
  // The tensors of `config` (the MTP modules the directory holds; the routed experts `share` names), read from
  // the model directory's safetensors in any float dtype and widened to f32. Throws Error naming
  // a missing tensor.
  static Parameters load(const std::string& model_dir, ExpertShare share = {});
  explicit Parameters(const Config& config, ExpertShare share = {});  // zero-filled, for tests and init
  // The layout alone: the tensors, with offsets, that Parameters(config, share) holds.
  static std::vector<ParameterTensor> layout(const Config& config, ExpertShare share);

  // A copy holding `depth` multi-token-prediction modules: this one's tensors, the modules it
  // lacks drawn as a random checkpoint would (seeded per tensor), and config.json saying so.
  Parameters with_mtp_modules(int64_t depth, uint64_t seed) const;
  // The MTP modules' tensors become untrainable: the optimizer leaves them as they are (a run that
  // does not train them carries them unchanged).
  void freeze_mtp();

  const Config& config() const { return config_; }
  const ExpertShare& expert_share() const { return share_; }
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
  // Where the dense region ends and the expert region begins.
  size_t dense_size() const { return dense_size_; }
  // [begin, end) of layer `layer`'s dense tensors in the flat buffers (the list keeps a layer's
  // tensors together, the embedding before the layers and the final norm and head after them),
  // and of its routed experts' (empty for a dense layer).
  std::pair<size_t, size_t> layer_range(int64_t layer) const { return layer_ranges_[size_t(layer)]; }
  std::pair<size_t, size_t> expert_range(int64_t layer) const { return expert_ranges_[size_t(layer)]; }
  // Each tensor's offset in tensor_list order, -1 for the experts not held: view_f32's offsets.
  const std::vector<int64_t>& list_offsets() const { return list_offsets_; }

  void zero_grads(ThreadPool& pool);
  // The values of [begin, end) are not needed on this rank (ZeRO-1 with bf16 weights: another
  // rank's shard of the f32 master weights): the whole pages inside go back to the system and
  // read as zero until written again.
  void drop_values(size_t begin, size_t end);
  // Writes config.json and model.safetensors (F32, HF names), atomically. `which` selects the
  // values or the gradients (for --dump-grads).
  enum class Which { Values, Grads };
  void save(const std::string& dir, Which which = Which::Values) const;
  // The values of the tensors `wanted` picks as one safetensors file, atomically; and the config.json
  // the parameters were loaded with into dir (nothing for parameters made from a Config).
  void save_tensors(const std::string& path, const std::function<bool(const ParameterTensor&)>& wanted) const;
  void save_config(const std::string& dir) const;

 private:
  Config config_;
  ExpertShare share_;
  std::string config_text_;
  std::vector<ParameterTensor> tensors_;
  std::unordered_map<std::string, size_t> index_;
  size_t dense_size_ = 0;
  std::vector<std::pair<size_t, size_t>> layer_ranges_, expert_ranges_;
  std::vector<int64_t> list_offsets_;
  std::vector<float> values_, grads_;
};

}  // namespace deepmoe::train
