#include "model/random_init.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <cstring>
#include <random>

#include "core/error.h"
#include "io/mapped_file.h"
#include "io/safetensors.h"
#include "model/config.h"

namespace deepmoe {

namespace {

enum class Init { Projection, Embedding, Norm, Bias };

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  Init init;
};

void add_mlp(std::vector<TensorSpec>& specs, const std::string& prefix, int64_t hidden, int64_t intermediate) {
  specs.push_back({prefix + "gate_proj.weight", {intermediate, hidden}, Init::Projection});
  specs.push_back({prefix + "up_proj.weight", {intermediate, hidden}, Init::Projection});
  specs.push_back({prefix + "down_proj.weight", {hidden, intermediate}, Init::Projection});
}

// Every tensor the config implies, by HF name.
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

}  // namespace

void write_random_checkpoint(const std::string& config_path, const std::string& out_dir, uint64_t seed, DType dtype) {
  if (dtype != DType::F32 && dtype != DType::BF16) fail("init: --dtype must be f32 or bf16");
  const std::string config_text = read_text_file(config_path);
  const Config config = load_config(config_path);
  std::filesystem::create_directories(out_dir);

  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const std::vector<TensorSpec> specs = tensor_specs(config);
  std::vector<TensorHeader> headers;
  for (const TensorSpec& spec : specs) headers.push_back({spec.name, dtype, spec.shape});
  SafetensorsWriter writer((std::filesystem::path(out_dir) / "model.safetensors").string(), headers);
  std::vector<uint8_t> bytes;
  for (const TensorSpec& spec : specs) {
    int64_t count = 1;
    for (int64_t extent : spec.shape) count *= extent;
    const float std_dev = spec.init == Init::Projection ? float(1.0 / std::sqrt(double(spec.shape.back())))
                          : spec.init == Init::Embedding ? 1.0f
                                                         : 0.1f;
    const float mean = spec.init == Init::Norm ? 1.0f : 0.0f;
    bytes.resize(size_t(count) * dtype_size(dtype));
    for (int64_t i = 0; i < count; ++i) {
      const float value = mean + std_dev * normal(rng);
      if (dtype == DType::F32) {
        std::memcpy(bytes.data() + i * 4, &value, 4);
      } else {
        const uint16_t bits = f32_to_bf16(value);
        std::memcpy(bytes.data() + i * 2, &bits, 2);
      }
    }
    writer.write_next(bytes);
  }
  writer.finish();
  const std::string config_out = (std::filesystem::path(out_dir) / "config.json").string();
  write_file_atomically(config_out, {reinterpret_cast<const uint8_t*>(config_text.data()), config_text.size()});
}

}  // namespace deepmoe
