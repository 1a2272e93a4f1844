#include "model/tensor_specs.h"

#include <fmt/format.h>

namespace deepmoe {

namespace {

void add_mlp(std::vector<TensorSpec>& specs, const std::string& prefix, int64_t hidden, int64_t intermediate) {
  specs.push_back({prefix + "gate_proj.weight", {intermediate, hidden}, Init::Projection});
  specs.push_back({prefix + "up_proj.weight", {intermediate, hidden}, Init::Projection});
  specs.push_back({prefix + "down_proj.weight", {hidden, intermediate}, Init::Projection});
}

}  // namespace

std::vector<TensorSpec> tensor_specs(const Config& c) {
  const int64_t hidden = c.hidden_size, heads = c.num_attention_heads;
  std::vector<TensorSpec> specs;
  specs.push_back({"model.embed_tokens.weight", {c.vocab_size, hidden}, Init::Embedding});
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = fmt::format("model.layers.{}.", i);
    specs.push_back({p + "input_layernorm.weight", {hidden}, Init::Norm});
    specs.push_back({p + "post_attention_layernorm.weight", {hidden}, Init::Norm});
    const std::string a = p + "self_attn.";
    if (c.q_lora_rank) {
      specs.push_back({a + "q_a_proj.weight", {*c.q_lora_rank, hidden}, Init::Projection});
      specs.push_back({a + "q_a_layernorm.weight", {*c.q_lora_rank}, Init::Norm});
      specs.push_back({a + "q_b_proj.weight", {heads * c.qk_head_dim(), *c.q_lora_rank}, Init::Projection});
    } else {
      specs.push_back({a + "q_proj.weight", {heads * c.qk_head_dim(), hidden}, Init::Projection});
    }
    specs.push_back({a + "kv_a_proj_with_mqa.weight", {c.kv_lora_rank + c.qk_rope_head_dim, hidden}, Init::Projection});
    specs.push_back({a + "kv_a_layernorm.weight", {c.kv_lora_rank}, Init::Norm});
    specs.push_back({a + "kv_b_proj.weight", {heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank},
                     Init::Projection});
    specs.push_back({a + "o_proj.weight", {hidden, heads * c.v_head_dim}, Init::Projection});
    const std::string m = p + "mlp.";
    if (!c.is_moe_layer(i)) {
      add_mlp(specs, m, hidden, c.intermediate_size);
      continue;
    }
    specs.push_back({m + "gate.weight", {c.n_routed_experts, hidden}, Init::Projection});
    if (c.topk_method == TopkMethod::NoauxTc)
      specs.push_back({m + "gate.e_score_correction_bias", {c.n_routed_experts}, Init::Bias});
    for (int64_t e = 0; e < c.n_routed_experts; ++e)
      add_mlp(specs, fmt::format("{}experts.{}.", m, e), hidden, c.moe_intermediate_size);
    if (c.n_shared_experts > 0) add_mlp(specs, m + "shared_experts.", hidden, c.moe_intermediate_size * c.n_shared_experts);
  }
  specs.push_back({"model.norm.weight", {hidden}, Init::Norm});
  if (!c.tie_word_embeddings) specs.push_back({"lm_head.weight", {c.vocab_size, hidden}, Init::Projection});
  return specs;
}


}  // namespace deepmoe
