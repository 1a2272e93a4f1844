// The one tensor list: names unique, GGUF export and import map every tensor back to itself,
// counts follow from its shapes (V2-Lite's published 15.7B), and ModelWeights::view_f32 lays the
// weight structs over train::Parameters' buffers at exactly their offsets.
#include "model/tensor_list.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "model/gguf_export.h"
#include "model/random_init.h"
#include "model/weights.h"
#include "train/parameters.h"

namespace deepmoe {
namespace {

namespace fs = std::filesystem;

// q_lora_rank set, noaux_tc (router bias), untied head; a dense layer, then MoE with shared experts.
constexpr const char* kLoraConfig = R"({
  "model_type": "deepseek_v3", "vocab_size": 96, "hidden_size": 64, "intermediate_size": 96,
  "moe_intermediate_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4, "q_lora_rank": 24,
  "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 20,
  "n_routed_experts": 4, "n_shared_experts": 1, "num_experts_per_tok": 2, "first_k_dense_replace": 1,
  "n_group": 2, "topk_group": 1, "topk_method": "noaux_tc", "scoring_func": "sigmoid"})";

// q_proj (no q_lora_rank), greedy routing (no bias), tied head, two shared experts.
constexpr const char* kPlainConfig = R"({
  "model_type": "deepseek_v2", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
  "moe_intermediate_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "q_lora_rank": null,
  "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 16, "v_head_dim": 16,
  "n_routed_experts": 3, "n_shared_experts": 2, "num_experts_per_tok": 2, "first_k_dense_replace": 2,
  "tie_word_embeddings": true})";

Config config_of(const char* json) { return parse_config(nlohmann::json::parse(json)); }

TEST(TensorList, NamesAreUniqueAndRolesCarryTheirRules) {
  for (const char* json : {kLoraConfig, kPlainConfig}) {
    const Config c = config_of(json);
    std::set<std::string> hf;
    std::set<std::pair<std::string, int64_t>> gguf;  // stacked experts share a name, one slice each
    for (const TensorInfo& t : tensor_list(c)) {
      EXPECT_TRUE(hf.insert(t.hf_name).second) << t.hf_name;
      EXPECT_TRUE(gguf.insert({t.gguf_name, t.expert}).second) << t.gguf_name << " expert " << t.expert;
      EXPECT_EQ(t.gguf_form == GgufForm::StackedExperts, t.expert >= 0) << t.hf_name;
      EXPECT_EQ(t.trainable, t.role != TensorRole::RouterBias) << t.hf_name;
      const bool kept = t.role == TensorRole::Embedding || t.role == TensorRole::Router ||
                        t.hf_name.ends_with("kv_b_proj.weight") || t.shape.size() == 1;
      EXPECT_EQ(t.quantizable, !kept) << t.hf_name;
      EXPECT_LT(t.layer, c.num_hidden_layers) << "never an MTP layer: " << t.hf_name;
    }
    EXPECT_EQ(hf.count("lm_head.weight"), c.tie_word_embeddings ? 0u : 1u);
  }
}

// A random checkpoint through GGUF export and import (f32, so values survive exactly): every
// tensor of the list comes back under its HF name with its values, nothing is left over.
TEST(TensorList, GgufExportAndImportMapEveryTensorBackToItsHfName) {
  const fs::path dir = fs::temp_directory_path() / ("deepmoe_tensor_list_test_" + std::to_string(::getpid()));
  for (const char* json : {kLoraConfig, kPlainConfig}) {
    fs::remove_all(dir);
    fs::create_directories(dir);
    std::ofstream(dir / "config.json") << json;
    write_random_checkpoint((dir / "config.json").string(), (dir / "model").string(), 3, DType::F32);
    export_gguf((dir / "model").string(), (dir / "model.gguf").string(), GgmlType::F32);
    const auto hf = ModelWeights::load((dir / "model").string());
    const auto gguf = ModelWeights::load((dir / "model.gguf").string());
    EXPECT_TRUE(gguf->ignored_tensors.empty());
    std::map<std::string, std::vector<float>> from_gguf;
    for_each_tensor(gguf->config, *gguf, [&](const TensorInfo& t, ConstTensorSlot slot) {
      std::vector<float>& values = from_gguf[t.hf_name];
      if (slot.vector) {
        values.assign(*slot.vector, *slot.vector + t.numel());
      } else if (t.gguf_form == GgufForm::SplitKvB) {  // held as attn_k_b / attn_v_b
        EXPECT_EQ(slot.matrix->data, nullptr);
        values = join_kv_b_proj(gguf->config, gguf->layers[size_t(t.layer)].self_attn);
      } else {
        values.resize(size_t(t.numel()));
        dequantize_rows(*slot.matrix, 0, slot.matrix->rows, values.data());
      }
    });
    size_t compared = 0;
    for_each_tensor(hf->config, *hf, [&](const TensorInfo& t, ConstTensorSlot slot) {
      const auto it = from_gguf.find(t.hf_name);
      ASSERT_NE(it, from_gguf.end()) << t.hf_name;
      const auto* expected = slot.vector ? *slot.vector : static_cast<const float*>(slot.matrix->data);
      ASSERT_EQ(it->second.size(), size_t(t.numel())) << t.hf_name;
      EXPECT_EQ(0, std::memcmp(it->second.data(), expected, it->second.size() * 4)) << t.hf_name;
      ++compared;
    });
    // A tied head is stored as GGUF's output.weight and comes back as an untied lm_head.
    EXPECT_EQ(from_gguf.size(), compared + (hf->config.tie_word_embeddings ? 1 : 0));
    if (hf->config.tie_word_embeddings) {
      EXPECT_EQ(from_gguf.at("lm_head.weight"), from_gguf.at("model.embed_tokens.weight"));
    }
  }
  fs::remove_all(dir);
}

TEST(TensorList, ParameterCountIsTheSumOfTheListShapes) {
  for (const char* json : {kLoraConfig, kPlainConfig}) {
    ModelWeights w;
    w.config = config_of(json);
    int64_t sum = 0;
    for (const TensorInfo& t : tensor_list(w.config)) sum += t.numel();
    EXPECT_EQ(w.parameter_count(), sum);
    EXPECT_EQ(int64_t(train::Parameters(w.config).values().size()), sum);
  }
}

// DeepSeek-V2-Lite: 15.7B parameters, 2.4B active per token (without the embedding).
// tensor_count is the list's length without the list, for each variant the list has (q_lora or
// q_proj, router bias or not, shared experts or not, tied head or not, moe_layer_freq), and a config
// that outgrows its checkpoint is refused before anything is sized from it.
TEST(TensorList, CountIsTheListsLengthAndAHostileConfigIsRefusedFirst) {
  for (const char* json : {kLoraConfig, kPlainConfig}) {
    Config c = config_of(json);
    EXPECT_EQ(tensor_count(c), int64_t(tensor_list(c).size()));
    for (const int64_t freq : {2, 3}) {
      c.moe_layer_freq = freq;
      c.num_hidden_layers = 7;
      EXPECT_EQ(tensor_count(c), int64_t(tensor_list(c).size())) << "moe_layer_freq " << freq;
    }
    for (const int64_t modules : {1, 2}) {  // MTP modules: their own 4 tensors around a block each
      c.num_nextn_predict_layers = modules;
      EXPECT_EQ(tensor_count(c), int64_t(tensor_list(c).size())) << modules << " MTP modules";
    }
    c.num_nextn_predict_layers = 0;
    c.n_routed_experts = 0;
    EXPECT_EQ(tensor_count(c), int64_t(tensor_list(c).size())) << "no experts";
  }
  // A checkpoint of 500 tensors against a config of 2^40 layers of 2^40 experts: the walk stops at
  // the first tensor it lacks, after at most 501 steps.
  Config hostile = config_of(kLoraConfig);
  hostile.num_hidden_layers = int64_t(1) << 40;
  hostile.n_routed_experts = int64_t(1) << 40;
  EXPECT_EQ(tensor_count(hostile), INT64_MAX);
  int64_t asked = 0;
  const auto missing = first_missing_tensor(hostile, 500, [&](const TensorInfo&) { return ++asked <= 500; });
  ASSERT_TRUE(missing.has_value());
  EXPECT_EQ(asked, 501);
  const Config fine = config_of(kLoraConfig);
  const std::vector<TensorInfo> list = tensor_list(fine);
  const auto all_but = [&](const std::string& name) {
    return [name](const TensorInfo& t) { return t.hf_name != name; };
  };
  EXPECT_FALSE(first_missing_tensor(fine, tensor_count(fine), all_but(list[7].hf_name)).has_value())
      << "enough tensors: the loader names what is missing";
  const auto named = first_missing_tensor(fine, tensor_count(fine) - 1, all_but(list[7].hf_name));
  ASSERT_TRUE(named.has_value());
  EXPECT_EQ(named->hf_name, list[7].hf_name);
  EXPECT_THROW(first_missing_tensor(fine, 3, [](const TensorInfo&) { return true; }), Error) << "holds lies";
}

TEST(TensorList, V2LiteCountsAreThePublishedTotals) {
  ModelWeights w;
  w.config = parse_config(nlohmann::json::parse(R"({
    "model_type": "deepseek_v2", "vocab_size": 102400, "hidden_size": 2048, "intermediate_size": 10944,
    "moe_intermediate_size": 1408, "num_hidden_layers": 27, "num_attention_heads": 16, "q_lora_rank": null,
    "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
    "n_routed_experts": 64, "n_shared_experts": 2, "num_experts_per_tok": 6, "first_k_dense_replace": 1,
    "tie_word_embeddings": false})"));
  const int64_t hidden = 2048, vocab = 102400, layers = 27, heads = 16, kv_rank = 512, rope = 64, nope = 128, v = 128;
  const int64_t attention = heads * (nope + rope) * hidden         // q_proj
                            + (kv_rank + rope) * hidden + kv_rank  // kv_a_proj_with_mqa, kv_a_layernorm
                            + heads * (nope + v) * kv_rank         // kv_b_proj
                            + hidden * heads * v                   // o_proj
                            + 2 * hidden;                          // input and post-attention norms
  const int64_t expert = 3 * hidden * 1408;
  const int64_t dense_mlp = 3 * hidden * 10944, moe = 64 * hidden + 64 * expert + 2 * expert;
  const int64_t total = 2 * vocab * hidden + hidden + layers * attention + dense_mlp + (layers - 1) * moe;
  EXPECT_EQ(w.parameter_count(), total);
  EXPECT_EQ(total, 15'706'484'224);
  const int64_t active = total - (layers - 1) * (64 - 6) * expert;
  EXPECT_EQ(w.active_parameter_count(), active);
  EXPECT_NEAR(double(active - vocab * hidden) / 1e9, 2.45, 0.01);
}

// Every field of the view, written out by hand, at train::Parameters' offset for its name.
void expect_view_at_parameter_offsets(const Config& c, const train::Parameters& p, const std::vector<float>& buffer) {
  const auto view = ModelWeights::view_f32(c, buffer.data(), p.list_offsets());
  const float* base = buffer.data();
  auto at = [&](const std::string& name) -> const float* {
    const train::ParameterTensor* t = p.find(name);
    EXPECT_NE(t, nullptr) << name;
    return t ? base + t->offset : nullptr;
  };
  auto expect_matrix = [&](const WeightMatrix& w, const std::string& name) {
    EXPECT_EQ(w.data, at(name)) << name;
    EXPECT_EQ(w.format, WeightFormat::F32) << name;
    const train::ParameterTensor* t = p.find(name);
    if (t) {
      EXPECT_EQ((std::vector<int64_t>{w.rows, w.cols}), t->shape) << name;
    }
  };
  auto expect_mlp = [&](const MlpWeights& m, const std::string& prefix) {
    expect_matrix(m.gate_proj, prefix + "gate_proj.weight");
    expect_matrix(m.up_proj, prefix + "up_proj.weight");
    expect_matrix(m.down_proj, prefix + "down_proj.weight");
  };
  expect_matrix(view->embed_tokens, "model.embed_tokens.weight");
  ASSERT_EQ(int64_t(view->layers.size()), c.num_hidden_layers);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& layer = view->layers[size_t(l)];
    const std::string prefix = "model.layers." + std::to_string(l) + ".", a = prefix + "self_attn.";
    EXPECT_EQ(layer.input_layernorm, at(prefix + "input_layernorm.weight"));
    EXPECT_EQ(layer.post_attention_layernorm, at(prefix + "post_attention_layernorm.weight"));
    const MlaWeights& attn = layer.self_attn;
    if (c.q_lora_rank) {
      expect_matrix(attn.q_a_proj, a + "q_a_proj.weight");
      EXPECT_EQ(attn.q_a_layernorm, at(a + "q_a_layernorm.weight"));
      expect_matrix(attn.q_b_proj, a + "q_b_proj.weight");
      EXPECT_EQ(attn.q_proj.data, nullptr);
    } else {
      expect_matrix(attn.q_proj, a + "q_proj.weight");
      EXPECT_EQ(attn.q_a_proj.data, nullptr);
      EXPECT_EQ(attn.q_a_layernorm, nullptr);
    }
    expect_matrix(attn.kv_a_proj_with_mqa, a + "kv_a_proj_with_mqa.weight");
    EXPECT_EQ(attn.kv_a_layernorm, at(a + "kv_a_layernorm.weight"));
    expect_matrix(attn.kv_b_proj, a + "kv_b_proj.weight");
    expect_matrix(attn.o_proj, a + "o_proj.weight");
    // Nothing derived in a view: the value half is kv_b_proj itself, the transposed key half empty.
    expect_matrix(attn.kv_b_proj_values, a + "kv_b_proj.weight");
    EXPECT_EQ(attn.values_head_stride, c.qk_nope_head_dim + c.v_head_dim);
    EXPECT_EQ(attn.values_head_offset, c.qk_nope_head_dim);
    EXPECT_EQ(attn.kv_b_proj_keys_transposed.data, nullptr);
    ASSERT_EQ(layer.is_moe, c.is_moe_layer(l));
    if (!layer.is_moe) {
      expect_mlp(layer.mlp, prefix + "mlp.");
      continue;
    }
    const MoeWeights& moe = layer.moe;
    expect_matrix(moe.gate, prefix + "mlp.gate.weight");
    const bool has_bias = c.topk_method == TopkMethod::NoauxTc;
    EXPECT_EQ(moe.e_score_correction_bias, has_bias ? at(prefix + "mlp.gate.e_score_correction_bias") : nullptr);
    ASSERT_EQ(int64_t(moe.experts.size()), c.n_routed_experts);
    for (int64_t e = 0; e < c.n_routed_experts; ++e) {
      const MlpWeights& expert = moe.experts[size_t(e)];
      if (p.expert_share().holds(e)) {
        expect_mlp(expert, prefix + "mlp.experts." + std::to_string(e) + ".");
      } else {  // another rank's: not bound
        EXPECT_EQ(expert.gate_proj.data, nullptr);
        EXPECT_EQ(expert.up_proj.data, nullptr);
        EXPECT_EQ(expert.down_proj.data, nullptr);
      }
    }
    ASSERT_EQ(moe.has_shared_experts, c.n_shared_experts > 0);
    if (moe.has_shared_experts) expect_mlp(moe.shared_experts, prefix + "mlp.shared_experts.");
  }
  EXPECT_EQ(view->norm, at("model.norm.weight"));
  if (c.tie_word_embeddings) {
    EXPECT_EQ(view->lm_head.data, view->embed_tokens.data);
    EXPECT_EQ(p.find("lm_head.weight"), nullptr);
  } else {
    expect_matrix(view->lm_head, "lm_head.weight");
  }
  // The view and the parameters cover the same floats (parameter_count is the whole model's).
  if (p.expert_share().count < 0) {
    EXPECT_EQ(size_t(view->parameter_count()), buffer.size());
  }
}

TEST(TensorList, F32ViewLandsAtTrainingParameterOffsetsForValuesAndGradients) {
  for (const char* json : {kLoraConfig, kPlainConfig}) {
    const Config c = config_of(json);
    ASSERT_TRUE(c.is_moe_layer(c.num_hidden_layers - 1));
    ASSERT_FALSE(c.is_moe_layer(0));
    const train::Parameters p(c);
    expect_view_at_parameter_offsets(c, p, p.values());
    expect_view_at_parameter_offsets(c, p, p.grads());
    // An expert-parallel rank's share: the held experts where its parameters put them, no others.
    const train::Parameters share(c, {1, 1});
    expect_view_at_parameter_offsets(c, share, share.values());
  }
}

// Expert parallelism's layout: the dense region first, the same on every rank and in the whole
// model; then the held experts, each MoE layer's together; a share holds exactly its experts.
TEST(TensorList, ParametersPutTheDenseRegionFirstAndHoldTheirShareOfExperts) {
  const Config c = config_of(kLoraConfig);  // 4 routed experts, MoE layers 1 and 2
  const train::Parameters whole(c), share(c, {2, 2});
  EXPECT_EQ(share.dense_size(), whole.dense_size());
  int64_t expert_floats = 0, held_floats = 0;
  for (const TensorInfo& info : tensor_list(c)) {
    const train::ParameterTensor* w = whole.find(info.hf_name);
    const train::ParameterTensor* s = share.find(info.hf_name);
    ASSERT_NE(w, nullptr) << info.hf_name;
    EXPECT_EQ(w->expert, info.expert);
    if (info.expert < 0) {  // dense: the same offset in both, inside the dense region
      ASSERT_NE(s, nullptr) << info.hf_name;
      EXPECT_EQ(s->offset, w->offset) << info.hf_name;
      EXPECT_LE(w->offset + w->size, whole.dense_size()) << info.hf_name;
      continue;
    }
    expert_floats += info.numel();
    EXPECT_GE(w->offset, whole.dense_size()) << info.hf_name;
    ASSERT_EQ(s != nullptr, info.expert == 2 || info.expert == 3) << info.hf_name;
    if (!s) continue;
    held_floats += info.numel();
    const auto [begin, end] = share.expert_range(info.layer);
    EXPECT_GE(s->offset, begin) << info.hf_name;
    EXPECT_LE(s->offset + s->size, end) << info.hf_name;
  }
  EXPECT_EQ(held_floats * 2, expert_floats);
  EXPECT_EQ(share.values().size(), share.dense_size() + size_t(held_floats));
  EXPECT_EQ(whole.values().size(), whole.dense_size() + size_t(expert_floats));
  EXPECT_EQ(share.expert_range(0).first, share.expert_range(0).second);  // the dense layer holds no experts
  EXPECT_EQ(share.expert_range(1).second, share.expert_range(2).first);
  EXPECT_EQ(share.expert_range(2).second, share.values().size());
}

}  // namespace
}  // namespace deepmoe
