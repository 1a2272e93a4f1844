// The model's shape and rules, read from a HuggingFace config.json with DeepSeek-V2/V3 field
// names. Absent fields take the defaults of DeepSeek's own config classes for the model_type.
#pragma once
#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <optional>
#include <string>

namespace deepmoe {

enum class ScoringFunc { Softmax, Sigmoid };
enum class TopkMethod { Greedy, GroupLimitedGreedy, NoauxTc };

struct RopeScaling {  // YaRN, the only scaling DeepSeek ships
  double factor = 1.0;
  int64_t original_max_position_embeddings = 4096;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 1.0;
  double mscale_all_dim = 0.0;
};

// deepmoe's own quantized checkpoints: config.json "quantization_config" with quant_method
// "deepmoe" (docs/quantization.md). Other quant_methods (DeepSeek-V3's fp8) are read per tensor.
struct QuantizationConfig {
  std::string format;                // w8, w8a8, w4g32|64|128[_asym], q8_0, q4_0
  std::string activations = "none";  // W8A8: static (calibrated) or dynamic (per token)
};
bool is_quantization_format(const std::string& format);

struct Config {
  std::string model_type = "deepseek_v3";
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t moe_intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  std::optional<int64_t> q_lora_rank;  // null: plain q_proj
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;
  int64_t n_routed_experts = 0;  // 0: no MoE layers (config null)
  int64_t n_shared_experts = 0;
  int64_t num_experts_per_tok = 0;
  int64_t first_k_dense_replace = 0;
  int64_t moe_layer_freq = 1;
  double routed_scaling_factor = 1.0;
  ScoringFunc scoring_func = ScoringFunc::Softmax;
  TopkMethod topk_method = TopkMethod::Greedy;
  int64_t n_group = 1;
  int64_t topk_group = 1;
  bool norm_topk_prob = false;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  std::optional<RopeScaling> rope_scaling;
  bool tie_word_embeddings = false;
  int64_t max_position_embeddings = 4096;
  // Multi-token-prediction modules (DeepSeek-V3 §2.2): module d is layer num_hidden_layers + d.
  // Loaders set it to the modules a checkpoint holds (many V3 conversions drop them).
  int64_t num_nextn_predict_layers = 0;
  std::optional<QuantizationConfig> quantization;

  // The main layers, then the MTP modules' decoder blocks (each with its own latent cache).
  int64_t layer_count() const { return num_hidden_layers + num_nextn_predict_layers; }
  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  bool is_moe_layer(int64_t layer) const {
    return n_routed_experts > 0 && layer >= first_k_dense_replace && layer % moe_layer_freq == 0;
  }
  // V3 multiplies routed weights by routed_scaling_factor always; V2 only when it does not
  // normalize them (HF modeling_deepseek_v2 vs _v3).
  bool v3_routing_rule() const { return model_type == "deepseek_v3"; }
  // Per token and layer: the latent c_kv plus the shared rope key, nothing expanded.
  int64_t kv_cache_values_per_token() const { return kv_lora_rank + qk_rope_head_dim; }
  double softmax_scale() const;
};

// Parses and validates; throws Error naming the field ("config.json: kv_lora_rank: ...").
Config parse_config(const nlohmann::json& json, const std::string& source = "config.json");
Config load_config(const std::string& path);

std::string to_string(ScoringFunc value);
std::string to_string(TopkMethod value);

}  // namespace deepmoe
