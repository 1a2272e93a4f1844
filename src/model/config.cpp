#include "model/config.h"

#include <nlohmann/json.hpp>

#include <cmath>

#include "core/error.h"
#include "io/mapped_file.h"

namespace deepmoe {

namespace {

// Reads optional fields with a clear error when the type is wrong.
class FieldReader {
 public:
  FieldReader(const nlohmann::json& json, const std::string& source) : json_(json), source_(source) {}

  bool present(const char* key) const { return json_.contains(key) && !json_[key].is_null(); }

  int64_t integer(const char* key, int64_t fallback, int64_t minimum = 0) const {
    if (!present(key)) return fallback;
    const auto& value = json_[key];
    if (!value.is_number_integer()) fail("{}: {}: expected an integer, found {}", source_, key, value.dump());
    const int64_t result = value.get<int64_t>();
    if (result < minimum) fail("{}: {}: must be >= {}, found {}", source_, key, minimum, result);
    return result;
  }
  double number(const char* key, double fallback) const {
    if (!present(key)) return fallback;
    const auto& value = json_[key];
    if (!value.is_number()) fail("{}: {}: expected a number, found {}", source_, key, value.dump());
    return value.get<double>();
  }
  bool boolean(const char* key, bool fallback) const {
    if (!present(key)) return fallback;
    const auto& value = json_[key];
    if (!value.is_boolean()) fail("{}: {}: expected true or false, found {}", source_, key, value.dump());
    return value.get<bool>();
  }
  std::string string(const char* key, const std::string& fallback) const {
    if (!present(key)) return fallback;
    const auto& value = json_[key];
    if (!value.is_string()) fail("{}: {}: expected a string, found {}", source_, key, value.dump());
    return value.get<std::string>();
  }

 private:
  const nlohmann::json& json_;
  const std::string& source_;
};

double yarn_get_mscale(double scale, double mscale) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

}  // namespace

double Config::softmax_scale() const {
  double scale = 1.0 / std::sqrt(double(qk_head_dim()));
  if (rope_scaling && rope_scaling->mscale_all_dim != 0.0) {
    const double m = yarn_get_mscale(rope_scaling->factor, rope_scaling->mscale_all_dim);
    scale *= m * m;
  }
  return scale;
}

Config parse_config(const nlohmann::json& json, const std::string& source) {
  if (!json.is_object()) fail("{}: expected a JSON object", source);
  const FieldReader field(json, source);
  Config c;
  c.model_type = field.string("model_type", "deepseek_v3");
  if (c.model_type != "deepseek_v3" && c.model_type != "deepseek_v2")
    fail("{}: model_type: expected deepseek_v2 or deepseek_v3, found {}", source, c.model_type);
  const bool v3 = c.model_type == "deepseek_v3";

  // Defaults: DeepseekV3Config / DeepseekV2Config.
  c.vocab_size = field.integer("vocab_size", v3 ? 129280 : 102400, 1);
  c.hidden_size = field.integer("hidden_size", v3 ? 7168 : 4096, 1);
  c.intermediate_size = field.integer("intermediate_size", v3 ? 18432 : 11008, 1);
  c.moe_intermediate_size = field.integer("moe_intermediate_size", v3 ? 2048 : 1407, 1);
  c.num_hidden_layers = field.integer("num_hidden_layers", v3 ? 61 : 30, 1);
  c.num_attention_heads = field.integer("num_attention_heads", v3 ? 128 : 32, 1);
  if (json.contains("q_lora_rank") && json["q_lora_rank"].is_null()) {
    c.q_lora_rank.reset();
  } else {
    c.q_lora_rank = field.integer("q_lora_rank", 1536, 1);
  }
  c.kv_lora_rank = field.integer("kv_lora_rank", 512, 1);
  c.qk_nope_head_dim = field.integer("qk_nope_head_dim", 128, 1);
  c.qk_rope_head_dim = field.integer("qk_rope_head_dim", 64, 2);
  if (c.qk_rope_head_dim % 2) fail("{}: qk_rope_head_dim: must be even, found {}", source, c.qk_rope_head_dim);
  c.v_head_dim = field.integer("v_head_dim", 128, 1);
  c.n_routed_experts = field.integer("n_routed_experts", v3 ? 256 : 0, 0);
  c.n_shared_experts = field.integer("n_shared_experts", v3 ? 1 : 0, 0);
  c.num_experts_per_tok = field.integer("num_experts_per_tok", v3 ? 8 : 0, 0);
  c.first_k_dense_replace = field.integer("first_k_dense_replace", v3 ? 3 : 0, 0);
  c.moe_layer_freq = field.integer("moe_layer_freq", 1, 1);
  c.routed_scaling_factor = field.number("routed_scaling_factor", v3 ? 2.5 : 1.0);
  c.norm_topk_prob = field.boolean("norm_topk_prob", v3);
  c.rms_norm_eps = field.number("rms_norm_eps", 1e-6);
  if (!(c.rms_norm_eps > 0)) fail("{}: rms_norm_eps: must be positive", source);
  c.rope_theta = field.number("rope_theta", 10000.0);
  if (!(c.rope_theta > 1)) fail("{}: rope_theta: must be > 1", source);
  c.tie_word_embeddings = field.boolean("tie_word_embeddings", false);
  c.max_position_embeddings = field.integer("max_position_embeddings", v3 ? 4096 : 2048, 1);
  c.num_nextn_predict_layers = field.integer("num_nextn_predict_layers", 0, 0);
  if (c.num_nextn_predict_layers > 64) fail("{}: num_nextn_predict_layers: at most 64", source);

  const std::string scoring = field.string("scoring_func", v3 ? "sigmoid" : "softmax");
  if (scoring == "softmax") c.scoring_func = ScoringFunc::Softmax;
  else if (scoring == "sigmoid") c.scoring_func = ScoringFunc::Sigmoid;
  else fail("{}: scoring_func: expected softmax or sigmoid, found {}", source, scoring);

  const std::string topk = field.string("topk_method", v3 ? "noaux_tc" : "greedy");
  if (topk == "greedy" || topk == "gready") c.topk_method = TopkMethod::Greedy;
  else if (topk == "group_limited_greedy") c.topk_method = TopkMethod::GroupLimitedGreedy;
  else if (topk == "noaux_tc") c.topk_method = TopkMethod::NoauxTc;
  else fail("{}: topk_method: expected greedy, group_limited_greedy or noaux_tc, found {}", source, topk);
  c.n_group = field.integer("n_group", v3 ? 8 : 1, 1);
  c.topk_group = field.integer("topk_group", v3 ? 4 : 1, 1);

  if (c.n_routed_experts > 0) {
    if (c.num_experts_per_tok < 1 || c.num_experts_per_tok > c.n_routed_experts)
      fail("{}: num_experts_per_tok: must be in [1, n_routed_experts={}], found {}", source, c.n_routed_experts,
           c.num_experts_per_tok);
    if (c.topk_method != TopkMethod::Greedy) {
      if (c.n_routed_experts % c.n_group)
        fail("{}: n_group: {} does not divide n_routed_experts {}", source, c.n_group, c.n_routed_experts);
      if (c.topk_group > c.n_group) fail("{}: topk_group: {} exceeds n_group {}", source, c.topk_group, c.n_group);
      if (c.topk_group * (c.n_routed_experts / c.n_group) < c.num_experts_per_tok)
        fail("{}: topk_group {} groups of {} experts cannot hold num_experts_per_tok {}", source, c.topk_group,
             c.n_routed_experts / c.n_group, c.num_experts_per_tok);
      if (c.topk_method == TopkMethod::NoauxTc && c.n_routed_experts / c.n_group < 2)
        fail("{}: noaux_tc needs at least 2 experts per group", source);
    }
  }

  if (field.present("rope_scaling")) {
    const auto& scaling = json["rope_scaling"];
    if (!scaling.is_object()) fail("{}: rope_scaling: expected an object or null", source);
    const FieldReader sub(scaling, source);
    const std::string type = sub.present("type") ? sub.string("type", "") : sub.string("rope_type", "");
    if (type != "yarn") fail("{}: rope_scaling: type '{}' is not supported (DeepSeek uses yarn)", source, type);
    RopeScaling yarn;
    yarn.factor = sub.number("factor", 1.0);
    if (!(yarn.factor > 0)) fail("{}: rope_scaling.factor: must be positive", source);
    yarn.original_max_position_embeddings = sub.integer("original_max_position_embeddings", 4096, 1);
    yarn.beta_fast = sub.number("beta_fast", 32.0);
    yarn.beta_slow = sub.number("beta_slow", 1.0);
    if (!(yarn.beta_fast > 0) || !(yarn.beta_slow > 0))
      fail("{}: rope_scaling: beta_fast and beta_slow must be positive", source);
    yarn.mscale = sub.number("mscale", 1.0);
    yarn.mscale_all_dim = sub.number("mscale_all_dim", 0.0);
    c.rope_scaling = yarn;
  }
  if (field.present("quantization_config") && json["quantization_config"].is_object() &&
      json["quantization_config"].value("quant_method", "") == "deepmoe") {
    const FieldReader sub(json["quantization_config"], source);
    QuantizationConfig q;
    q.format = sub.string("format", "");
    if (!is_quantization_format(q.format))
      fail(
          "{}: quantization_config.format: '{}' is not one of w8, w8a8, w4g32, w4g64, w4g128 (optionally "
          "with _asym), q8_0, q4_0",
          source, q.format);
    q.activations = sub.string("activations", "none");
    if (q.activations != "none" && q.activations != "static" && q.activations != "dynamic")
      fail("{}: quantization_config.activations: '{}' is not none, static or dynamic", source, q.activations);
    c.quantization = q;
  }
  return c;
}

bool is_quantization_format(const std::string& format) {
  static const char* const kFormats[] = {"w8",         "w8a8",       "w4g32",       "w4g64", "w4g128",
                                         "w4g32_asym", "w4g64_asym", "w4g128_asym", "q8_0",  "q4_0"};
  for (const char* f : kFormats)
    if (format == f) return true;
  return false;
}

Config load_config(const std::string& path) {
  const auto json = nlohmann::json::parse(read_text_file(path), nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) fail("{}: not valid JSON", path);
  return parse_config(json, path);
}

std::string to_string(ScoringFunc value) { return value == ScoringFunc::Softmax ? "softmax" : "sigmoid"; }

std::string to_string(TopkMethod value) {
  switch (value) {
    case TopkMethod::Greedy: return "greedy";
    case TopkMethod::GroupLimitedGreedy: return "group_limited_greedy";
    case TopkMethod::NoauxTc: return "noaux_tc";
  }
  return "?";
}

}  // namespace deepmoe
