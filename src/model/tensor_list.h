// The one list of the model's tensors (gemma.cpp's ForEachTensor): for a Config, every tensor of
// the main layers, then of the num_nextn_predict_layers multi-token-prediction modules, in one fixed
// order, with its HF and GGUF names, shape, role, how random init fills it, whether quantization
// and the optimizer touch it, and the field of ModelWeights it binds to. Loading (safetensors and
// GGUF), random init, parameter counts, decode bytes, bf16 rounding, quantization, GGUF export and
// import, and train::Parameters' flat layout (list order) all walk this list. Adding a tensor is
// one line in tensor_list.cpp.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "model/config.h"
#include "model/weights.h"

namespace deepmoe {

enum class TensorRole {
  Embedding,   // model.embed_tokens: rows looked up, not multiplied
  Norm,        // RMSNorm weights, [n]
  Projection,  // attention and MLP/expert linear layers, [out, in]
  Router,      // mlp.gate: routes in f32 (HF does), never quantized or rounded
  RouterBias,  // mlp.gate.e_score_correction_bias (noaux_tc): moved by the bias update, not the optimizer
  Head,        // lm_head, when untied
};

// How a random checkpoint fills the tensor (write_random_checkpoint): projections N(0, 1/in),
// embeddings N(0, 1), norms 1 + N(0, 0.1²), biases N(0, 0.1²).
enum class Init { Projection, Embedding, Norm, Bias };

// How the tensor sits in llama.cpp's deepseek2 GGUF.
enum class GgufForm {
  Plain,           // one GGUF tensor, HF [out, in] as ggml {in, out}
  StackedExperts,  // the routed experts of a layer share one {in, out, n_routed_experts} tensor,
                   // `expert` is this one's slice
  SplitKvB,        // kv_b_proj: written as its halves attn_k_b / attn_v_b (kv_b_proj_halves); a
                   // GGUF may also hold it whole under gguf_name
};

// The part of the model a tensor belongs to. GGUF writes each layer's attention block (its norm
// first) before its feed-forward block; the list puts both norms of a layer first.
enum class Block { Outside, Attention, FeedForward };  // Outside: embedding, final norm, head

struct TensorInfo {
  std::string hf_name;         // model.layers.3.self_attn.q_a_proj.weight
  std::string gguf_name;       // blk.3.attn_q_a.weight (StackedExperts: the stacked tensor's)
  std::vector<int64_t> shape;  // HF's: [out, in] for matrices, [n] for vectors
  TensorRole role = TensorRole::Projection;
  Init init = Init::Projection;
  GgufForm gguf_form = GgufForm::Plain;
  Block block = Block::Outside;
  int64_t layer = -1;        // -1: outside the layers
  int64_t expert = -1;       // routed expert index; -1 otherwise
  bool quantizable = false;  // quantize_model converts it (projections and the head, kv_b_proj excepted)
  bool trainable = true;     // the optimizer updates it (all but RouterBias)
  bool mtp = false;          // part of a multi-token-prediction module (layer >= num_hidden_layers)

  int64_t numel() const;
};

// Where a tensor binds in ModelWeights: exactly one of the two is set. Const for a const walk.
template <bool kConst>
struct BasicTensorSlot {
  std::conditional_t<kConst, const WeightMatrix, WeightMatrix>* matrix = nullptr;
  std::conditional_t<kConst, const float* const, const float*>* vector = nullptr;  // norms, router bias
};
using TensorSlot = BasicTensorSlot<false>;
using ConstTensorSlot = BasicTensorSlot<true>;

// The list without slots.
std::vector<TensorInfo> tensor_list(const Config& config);

// tensor_list(config).size() without building the list. Saturates at INT64_MAX.
int64_t tensor_count(const Config& config);
// Before anything is sized from a checkpoint's config: when the checkpoint holds fewer tensors
// than the config describes, the first tensor of the list it lacks (`holds` says which it has).
// The walk stops there, within tensors_held + 1 steps, so a hostile config (a million layers of a
// million experts) costs nothing; nullopt when the count is enough (the loader then names any
// tensor still missing as it binds them). Throws Error when `holds` claims more than tensors_held.
std::optional<TensorInfo> first_missing_tensor(const Config& config, int64_t tensors_held,
                                               const std::function<bool(const TensorInfo&)>& holds);

// Calls visit(info, slot) for every tensor in list order. The mutable walk first sizes `weights`
// to `config` (layers, is_moe, has_shared_experts, experts) so every slot exists; the const walk
// throws Error when `weights` is not sized so. The derived members (lm_head when tied,
// kv_b_proj_keys_transposed, kv_b_proj_values) are no tensors of the list.
void for_each_tensor(const Config& config, ModelWeights& weights,
                     const std::function<void(const TensorInfo&, TensorSlot)>& visit);
void for_each_tensor(const Config& config, const ModelWeights& weights,
                     const std::function<void(const TensorInfo&, ConstTensorSlot)>& visit);

// The head as a tensor of its own. In the list only when untied; when tied the model reads
// embed_tokens and a stored lm_head.weight is ignored, as HF does, while GGUF still stores the
// head (its gguf_name, written from the embedding).
TensorInfo lm_head_info(const Config& config);

// kv_b_proj's halves as a GGUF holds them (attn_k_b {nope, kv_lora_rank, heads}: the key half
// transposed per head; attn_v_b {kv_lora_rank, v, heads}), and the names gguf_import presents them
// under for ModelWeights::load (see gguf_import.h).
struct KvBHalves {
  std::string gguf_keys, gguf_values, hf_keys, hf_values;
};
KvBHalves kv_b_proj_halves(int64_t layer);

// How many MTP modules a checkpoint holds, of those `config` names: module d counts when
// `holds(name)` for its eh_proj and every module before it does. Loaders set
// num_nextn_predict_layers to it (a V3 conversion that dropped layer 61 loads without MTP).
int64_t mtp_modules_held(const Config& config, const std::function<bool(const std::string& hf_name)>& holds);
// The HF names of the copies of the embedding and head an MTP module's layer may carry
// (model.layers.L.embed_tokens.weight, shared_head.head.weight): the main model's are used.
std::vector<std::string> mtp_shared_copies(int64_t layer);

}  // namespace deepmoe
