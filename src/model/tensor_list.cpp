#include "model/tensor_list.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>

#include "core/error.h"

namespace deepmoe {

namespace {

// What a line of the list says beyond role, names, shape and slot.
struct Extra {
  GgufForm gguf_form = GgufForm::Plain;
  int64_t expert = -1;
  bool never_quantized = false;
};

TensorInfo make_info(TensorRole role, std::string hf_name, std::string gguf_name, std::vector<int64_t> shape,
                     Block block, int64_t layer, Extra extra) {
  TensorInfo t;
  t.hf_name = std::move(hf_name);
  t.gguf_name = std::move(gguf_name);
  t.shape = std::move(shape);
  t.role = role;
  t.init = role == TensorRole::Embedding    ? Init::Embedding
           : role == TensorRole::Norm       ? Init::Norm
           : role == TensorRole::RouterBias ? Init::Bias
                                            : Init::Projection;
  t.gguf_form = extra.gguf_form;
  t.block = block;
  t.layer = layer;
  t.expert = extra.expert;
  t.quantizable = (role == TensorRole::Projection || role == TensorRole::Head) && !extra.never_quantized;
  t.trainable = role != TensorRole::RouterBias;
  return t;
}

// One walk of the list over a ModelWeights (const or not), or over none (tensor_list), where every
// slot is null.
template <bool kConst>
class Walker {
 public:
  using Weights = std::conditional_t<kConst, const ModelWeights, ModelWeights>;
  using Slot = BasicTensorSlot<kConst>;
  using Visit = std::function<void(const TensorInfo&, Slot)>;

  Walker(const Config& config, Weights* weights, const Visit& visit) : c_(config), w_(weights), visit_(visit) {}

  // The list. Its order is train::Parameters' layout and the order random init draws values in.
  void walk() {
    using enum TensorRole;
    const int64_t hidden = c_.hidden_size;
    add(Embedding, "model.embed_tokens.weight", "token_embd.weight", {c_.vocab_size, hidden},
        field(w_, &ModelWeights::embed_tokens));
    for (int64_t i = 0; i < c_.num_hidden_layers; ++i) layer(i);
    add(Norm, "model.norm.weight", "output_norm.weight", {hidden}, field(w_, &ModelWeights::norm));
    if (!c_.tie_word_embeddings) visit_(lm_head_info(c_), slot(field(w_, &ModelWeights::lm_head)));
    for (int64_t d = 0; d < c_.num_nextn_predict_layers; ++d) mtp_module(d);
  }

 private:
  static constexpr Block Attn = Block::Attention, Ffn = Block::FeedForward;

  // Its own tensors around a full decoder block, all under layer num_hidden_layers + d (DeepSeek's
  // names; GGUF's blk.L.nextn.*, as llama.cpp's converters write them).
  void mtp_module(int64_t d) {
    using enum TensorRole;
    const int64_t hidden = c_.hidden_size, index = c_.num_hidden_layers + d;
    auto* m = w_ ? &w_->mtp[size_t(d)] : nullptr;
    layer_ = index;
    add(Attn, Norm, "enorm.weight", "nextn.enorm.weight", {hidden}, field(m, &MtpWeights::enorm));
    add(Attn, Norm, "hnorm.weight", "nextn.hnorm.weight", {hidden}, field(m, &MtpWeights::hnorm));
    add(Attn, Projection, "eh_proj.weight", "nextn.eh_proj.weight", {hidden, 2 * hidden},
        field(m, &MtpWeights::eh_proj));
    layer(index);
    add(Ffn, Norm, "shared_head.norm.weight", "nextn.shared_head_norm.weight", {hidden},
        field(m, &MtpWeights::shared_head_norm));
  }

  void layer(int64_t i) {
    using enum TensorRole;
    const Config& c = c_;
    const int64_t hidden = c.hidden_size, heads = c.num_attention_heads;
    layer_ = i;
    auto* layer = w_ ? &w_->layers[size_t(i)] : nullptr;
    auto* attn = field(layer, &LayerWeights::self_attn);
    add(Attn, Norm, "input_layernorm.weight", "attn_norm.weight", {hidden},
        field(layer, &LayerWeights::input_layernorm));
    add(Ffn, Norm, "post_attention_layernorm.weight", "ffn_norm.weight", {hidden},
        field(layer, &LayerWeights::post_attention_layernorm));
    if (c.q_lora_rank) {
      const int64_t q_rank = *c.q_lora_rank;
      add(Attn, Projection, "self_attn.q_a_proj.weight", "attn_q_a.weight", {q_rank, hidden},
          field(attn, &MlaWeights::q_a_proj));
      add(Attn, Norm, "self_attn.q_a_layernorm.weight", "attn_q_a_norm.weight", {q_rank},
          field(attn, &MlaWeights::q_a_layernorm));
      add(Attn, Projection, "self_attn.q_b_proj.weight", "attn_q_b.weight", {heads * c.qk_head_dim(), q_rank},
          field(attn, &MlaWeights::q_b_proj));
    } else {
      add(Attn, Projection, "self_attn.q_proj.weight", "attn_q.weight", {heads * c.qk_head_dim(), hidden},
          field(attn, &MlaWeights::q_proj));
    }
    add(Attn, Projection, "self_attn.kv_a_proj_with_mqa.weight", "attn_kv_a_mqa.weight",
        {c.kv_lora_rank + c.qk_rope_head_dim, hidden}, field(attn, &MlaWeights::kv_a_proj_with_mqa));
    add(Attn, Norm, "self_attn.kv_a_layernorm.weight", "attn_kv_a_norm.weight", {c.kv_lora_rank},
        field(attn, &MlaWeights::kv_a_layernorm));
    // Kept at its precision: the absorbed attention reads its transposed key half.
    add(Attn, Projection, "self_attn.kv_b_proj.weight", "attn_kv_b.weight", kv_b_proj_shape(c),
        field(attn, &MlaWeights::kv_b_proj), {.gguf_form = GgufForm::SplitKvB, .never_quantized = true});
    add(Attn, Projection, "self_attn.o_proj.weight", "attn_output.weight", {hidden, heads * c.v_head_dim},
        field(attn, &MlaWeights::o_proj));
    if (!c.is_moe_layer(i)) {
      mlp("mlp.", {"ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"}, c.intermediate_size,
          field(layer, &LayerWeights::mlp));
      return;
    }
    auto* moe = field(layer, &LayerWeights::moe);
    add(Ffn, Router, "mlp.gate.weight", "ffn_gate_inp.weight", {c.n_routed_experts, hidden},
        field(moe, &MoeWeights::gate));
    if (c.topk_method == TopkMethod::NoauxTc)
      add(Ffn, RouterBias, "mlp.gate.e_score_correction_bias", "exp_probs_b.bias", {c.n_routed_experts},
          field(moe, &MoeWeights::e_score_correction_bias));
    for (int64_t e = 0; e < c.n_routed_experts; ++e)
      mlp(fmt::format("mlp.experts.{}.", e), {"ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight"},
          c.moe_intermediate_size, moe ? &moe->experts[size_t(e)] : nullptr,
          {.gguf_form = GgufForm::StackedExperts, .expert = e});
    if (c.n_shared_experts > 0)
      mlp("mlp.shared_experts.", {"ffn_gate_shexp.weight", "ffn_up_shexp.weight", "ffn_down_shexp.weight"},
          c.moe_intermediate_size * c.n_shared_experts, field(moe, &MoeWeights::shared_experts));
  }

  // SiLU-gated: the dense MLP, one routed expert or the shared experts, named alike in HF.
  template <typename Mlp>
  void mlp(const std::string& hf_prefix, const std::array<const char*, 3>& gguf, int64_t intermediate, Mlp* m,
           Extra extra = {}) {
    using enum TensorRole;
    const int64_t hidden = c_.hidden_size;
    add(Ffn, Projection, hf_prefix + "gate_proj.weight", gguf[0], {intermediate, hidden},
        field(m, &MlpWeights::gate_proj), extra);
    add(Ffn, Projection, hf_prefix + "up_proj.weight", gguf[1], {intermediate, hidden}, field(m, &MlpWeights::up_proj),
        extra);
    add(Ffn, Projection, hf_prefix + "down_proj.weight", gguf[2], {hidden, intermediate},
        field(m, &MlpWeights::down_proj), extra);
  }

  // A tensor outside the layers.
  template <typename Field>
  void add(TensorRole role, const std::string& hf, const std::string& gguf, std::vector<int64_t> shape, Field* f) {
    visit_(make_info(role, hf, gguf, std::move(shape), Block::Outside, -1, {}), slot(f));
  }
  // A tensor of layer layer_: names relative to model.layers.N. and blk.N.
  template <typename Field>
  void add(Block block, TensorRole role, const std::string& hf, const std::string& gguf, std::vector<int64_t> shape,
           Field* f, Extra extra = {}) {
    TensorInfo info = make_info(role, fmt::format("model.layers.{}.{}", layer_, hf),
                                fmt::format("blk.{}.{}", layer_, gguf), std::move(shape), block, layer_, extra);
    info.mtp = layer_ >= c_.num_hidden_layers;
    visit_(info, slot(f));
  }

  // &(s->*member), or nullptr when walking without weights.
  template <typename S, typename Member>
  static auto field(S* s, Member member) {
    return s ? &(s->*member) : nullptr;
  }
  static Slot slot(decltype(Slot::matrix) matrix) { return {matrix, nullptr}; }
  static Slot slot(decltype(Slot::vector) vector) { return {nullptr, vector}; }

  const Config& c_;
  Weights* w_;
  const Visit& visit_;
  int64_t layer_ = -1;
};

void size_to_config(const Config& c, ModelWeights& w) {
  w.layers.resize(size_t(c.layer_count()));
  w.mtp.resize(size_t(c.num_nextn_predict_layers));
  for (int64_t i = 0; i < c.layer_count(); ++i) {
    LayerWeights& layer = w.layers[size_t(i)];
    layer.is_moe = c.is_moe_layer(i);
    if (!layer.is_moe) continue;
    layer.moe.experts.resize(size_t(c.n_routed_experts));
    layer.moe.has_shared_experts = c.n_shared_experts > 0;
  }
}

void check_sized(const Config& c, const ModelWeights& w) {
  bool sized = int64_t(w.layers.size()) == c.layer_count() && int64_t(w.mtp.size()) == c.num_nextn_predict_layers;
  for (int64_t i = 0; sized && i < c.layer_count(); ++i) {
    const LayerWeights& layer = w.layers[size_t(i)];
    sized =
        layer.is_moe == c.is_moe_layer(i) && (!layer.is_moe || int64_t(layer.moe.experts.size()) == c.n_routed_experts);
  }
  if (!sized)
    fail("for_each_tensor: the weights' {} layers are not laid out for a config of {} layers", w.layers.size(),
         c.layer_count());
}

}  // namespace

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (const int64_t extent : shape) n *= extent;
  return n;
}

std::vector<TensorInfo> tensor_list(const Config& config) {
  std::vector<TensorInfo> out;
  const std::function<void(const TensorInfo&, ConstTensorSlot)> collect = [&](const TensorInfo& t, ConstTensorSlot) {
    out.push_back(t);
  };
  Walker<true>(config, nullptr, collect).walk();
  return out;
}

void for_each_tensor(const Config& config, ModelWeights& weights,
                     const std::function<void(const TensorInfo&, TensorSlot)>& visit) {
  size_to_config(config, weights);
  Walker<false>(config, &weights, visit).walk();
}

void for_each_tensor(const Config& config, const ModelWeights& weights,
                     const std::function<void(const TensorInfo&, ConstTensorSlot)>& visit) {
  check_sized(config, weights);
  Walker<true>(config, &weights, visit).walk();
}

int64_t tensor_count(const Config& c) {
  // Walker::layer's tensors, counted: two norms, the query path (3 with q_lora_rank, else 1),
  // kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj, o_proj; then a dense MLP (3) or the router, its
  // bias (noaux_tc), 3 per routed expert and 3 for the shared experts. An MTP module adds 4 to
  // its block.
  const int64_t layers = c.layer_count();
  const int64_t first_moe = std::min(layers, c.first_k_dense_replace);
  // Config::is_moe_layer: the multiples of moe_layer_freq in [first_k_dense_replace, layers).
  const auto multiples_below = [&](int64_t x) { return x / c.moe_layer_freq + (x % c.moe_layer_freq != 0); };
  const int64_t moe_layers = c.n_routed_experts > 0 ? multiples_below(layers) - multiples_below(first_moe) : 0;
  const int64_t attention = 2 + (c.q_lora_rank ? 3 : 1) + 4;  // a dense layer adds its MLP's 3
  const int64_t moe_fixed = 1 + (c.topk_method == TopkMethod::NoauxTc ? 1 : 0) + (c.n_shared_experts > 0 ? 3 : 0);
  // In long double: exact while the count fits in 64 bits, and a hostile product saturates.
  const long double total = (long double)(layers) * (attention + 3) + (long double)(moe_layers) * (moe_fixed - 3) +
                            3.0L * moe_layers * c.n_routed_experts + 2 + (c.tie_word_embeddings ? 0 : 1) +
                            4.0L * c.num_nextn_predict_layers;
  return total >= (long double)(INT64_MAX) ? INT64_MAX : int64_t(total);  // + embedding, final norm, head
}

std::optional<TensorInfo> first_missing_tensor(const Config& config, int64_t tensors_held,
                                               const std::function<bool(const TensorInfo&)>& holds) {
  if (tensor_count(config) <= tensors_held) return std::nullopt;
  struct Found {
    TensorInfo missing;
  };
  int64_t present = 0;
  const std::function<void(const TensorInfo&, ConstTensorSlot)> look = [&](const TensorInfo& t, ConstTensorSlot) {
    if (!holds(t)) throw Found{t};
    if (++present > tensors_held) fail("first_missing_tensor: more tensors held than the {} counted", tensors_held);
  };
  try {
    Walker<true>(config, nullptr, look).walk();
  } catch (Found& found) {
    return std::move(found.missing);
  }
  fail("first_missing_tensor: the list holds fewer tensors than tensor_count");
}

TensorInfo lm_head_info(const Config& c) {
  return make_info(TensorRole::Head, "lm_head.weight", "output.weight", {c.vocab_size, c.hidden_size}, Block::Outside,
                   -1, {});
}

KvBHalves kv_b_proj_halves(int64_t layer) {
  return {fmt::format("blk.{}.attn_k_b.weight", layer), fmt::format("blk.{}.attn_v_b.weight", layer),
          fmt::format("model.layers.{}.self_attn.k_b_proj.weight", layer),
          fmt::format("model.layers.{}.self_attn.v_b_proj.weight", layer)};
}

int64_t mtp_modules_held(const Config& config, const std::function<bool(const std::string&)>& holds) {
  int64_t d = 0;
  while (d < config.num_nextn_predict_layers &&
         holds(fmt::format("model.layers.{}.eh_proj.weight", config.num_hidden_layers + d)))
    ++d;
  return d;
}

std::vector<std::string> mtp_shared_copies(int64_t layer) {
  return {fmt::format("model.layers.{}.embed_tokens.weight", layer),
          fmt::format("model.layers.{}.shared_head.head.weight", layer)};
}

}  // namespace deepmoe
