#include "model/config.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace deepmoe {
namespace {

TEST(ConfigTest, AbsentFieldsTakeDeepSeekV3Defaults) {
  const Config c = parse_config(nlohmann::json{{"model_type", "deepseek_v3"}});
  EXPECT_EQ(c.hidden_size, 7168);
  EXPECT_EQ(c.n_routed_experts, 256);
  EXPECT_EQ(c.num_experts_per_tok, 8);
  EXPECT_EQ(c.topk_method, TopkMethod::NoauxTc);
  EXPECT_EQ(c.scoring_func, ScoringFunc::Sigmoid);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_EQ(c.first_k_dense_replace, 3);
  EXPECT_DOUBLE_EQ(c.routed_scaling_factor, 2.5);
  ASSERT_TRUE(c.q_lora_rank.has_value());
  EXPECT_EQ(*c.q_lora_rank, 1536);
  EXPECT_EQ(c.kv_cache_values_per_token(), 576);
}

TEST(ConfigTest, V2LiteShapeParsesWithNullQLoraAndHistoricalGreedySpelling) {
  const auto json = nlohmann::json::parse(R"({
    "model_type": "deepseek_v2", "hidden_size": 2048, "num_hidden_layers": 27, "num_attention_heads": 16,
    "q_lora_rank": null, "kv_lora_rank": 512, "n_routed_experts": 64, "n_shared_experts": 2,
    "num_experts_per_tok": 6, "first_k_dense_replace": 1, "topk_method": "gready", "n_group": 1, "topk_group": 1,
    "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096, "beta_fast": 32,
                     "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707}})");
  const Config c = parse_config(json);
  EXPECT_FALSE(c.q_lora_rank.has_value());
  EXPECT_EQ(c.topk_method, TopkMethod::Greedy);
  EXPECT_EQ(c.scoring_func, ScoringFunc::Softmax);
  EXPECT_FALSE(c.norm_topk_prob);
  EXPECT_FALSE(c.v3_routing_rule());
  ASSERT_TRUE(c.rope_scaling.has_value());
  EXPECT_DOUBLE_EQ(c.rope_scaling->factor, 40.0);
  EXPECT_FALSE(c.is_moe_layer(0));
  EXPECT_TRUE(c.is_moe_layer(1));
  // softmax scale grows by mscale(40, 0.707)² = (0.1·0.707·ln 40 + 1)²
  const double m = 0.1 * 0.707 * std::log(40.0) + 1.0;
  EXPECT_NEAR(c.softmax_scale(), m * m / std::sqrt(192.0), 1e-12);
}

TEST(ConfigTest, BadFieldsAreNamedInTheError) {
  auto message = [](const char* text) {
    try {
      parse_config(nlohmann::json::parse(text));
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_NE(message(R"({"hidden_size": "big"})").find("hidden_size"), std::string::npos);
  EXPECT_NE(message(R"({"topk_method": "best"})").find("topk_method"), std::string::npos);
  EXPECT_NE(message(R"({"scoring_func": "relu"})").find("scoring_func"), std::string::npos);
  EXPECT_NE(message(R"({"model_type": "llama"})").find("model_type"), std::string::npos);
  EXPECT_NE(message(R"({"num_hidden_layers": -1})").find("num_hidden_layers"), std::string::npos);
  EXPECT_NE(message(R"({"rope_scaling": {"type": "linear", "factor": 2}})").find("rope_scaling"), std::string::npos);
  EXPECT_NE(message(R"({"n_routed_experts": 16, "n_group": 3})").find("n_group"), std::string::npos);
  EXPECT_NE(message(R"({"n_routed_experts": 16, "num_experts_per_tok": 17})").find("num_experts_per_tok"),
            std::string::npos);
  EXPECT_NE(message(R"({"qk_rope_head_dim": 7})").find("qk_rope_head_dim"), std::string::npos);
  EXPECT_NE(message("[]").find("object"), std::string::npos);
}

}  // namespace
}  // namespace deepmoe
