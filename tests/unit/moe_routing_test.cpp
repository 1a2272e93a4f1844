#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "model/moe.h"
#include "test_util.h"

namespace deepmoe {
namespace {

Config routing_config(TopkMethod method, ScoringFunc scoring, const char* model_type) {
  Config c;
  c.model_type = model_type;
  c.n_routed_experts = 16;
  c.num_experts_per_tok = 3;
  c.n_group = 4;
  c.topk_group = 2;
  c.topk_method = method;
  c.scoring_func = scoring;
  c.routed_scaling_factor = 2.5;
  return c;
}

std::vector<double> scores_of(const Config& c, const std::vector<float>& logits) {
  std::vector<double> scores(logits.size());
  double total = 0.0;
  for (size_t e = 0; e < logits.size(); ++e) {
    scores[e] = c.scoring_func == ScoringFunc::Softmax ? std::exp(double(logits[e]))
                                                       : 1.0 / (1.0 + std::exp(-double(logits[e])));
    total += scores[e];
  }
  if (c.scoring_func == ScoringFunc::Softmax)
    for (auto& s : scores) s /= total;
  return scores;
}

TEST(MoeRoutingTest, GreedyPicksTheBestScoresInOrder) {
  Config c = routing_config(TopkMethod::Greedy, ScoringFunc::Softmax, "deepseek_v2");
  const auto logits = testing::random_vector(16, 1, 2.0f);
  int32_t experts[3];
  float weights[3];
  route_token(c, logits.data(), nullptr, experts, weights);
  std::vector<int32_t> order(16);
  for (int i = 0; i < 16; ++i) order[size_t(i)] = i;
  std::sort(order.begin(), order.end(), [&](int a, int b) { return logits[size_t(a)] > logits[size_t(b)]; });
  const auto scores = scores_of(c, logits);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(experts[i], order[size_t(i)]);
    // V2 rule, no normalization: weight = score * routed_scaling_factor
    EXPECT_NEAR(weights[i], scores[size_t(experts[i])] * 2.5, 1e-6);
  }
}

TEST(MoeRoutingTest, V2NormalizesWithoutScalingAndV3NormalizesThenScales) {
  const auto logits = testing::random_vector(16, 2, 2.0f);
  int32_t experts[3];
  float weights[3];
  Config v2 = routing_config(TopkMethod::Greedy, ScoringFunc::Softmax, "deepseek_v2");
  v2.norm_topk_prob = true;
  route_token(v2, logits.data(), nullptr, experts, weights);
  EXPECT_NEAR(weights[0] + weights[1] + weights[2], 1.0, 1e-6);
  Config v3 = routing_config(TopkMethod::Greedy, ScoringFunc::Sigmoid, "deepseek_v3");
  v3.norm_topk_prob = true;
  route_token(v3, logits.data(), nullptr, experts, weights);
  EXPECT_NEAR(weights[0] + weights[1] + weights[2], 2.5, 1e-6);
}

TEST(MoeRoutingTest, GroupLimitedGreedyOnlyChoosesFromTheBestGroups) {
  Config c = routing_config(TopkMethod::GroupLimitedGreedy, ScoringFunc::Softmax, "deepseek_v2");
  for (uint64_t seed = 0; seed < 50; ++seed) {
    const auto logits = testing::random_vector(16, 100 + seed, 2.0f);
    std::vector<float> group_max(4, -1e30f);
    for (int e = 0; e < 16; ++e) group_max[size_t(e / 4)] = std::max(group_max[size_t(e / 4)], logits[size_t(e)]);
    std::vector<float> sorted = group_max;
    std::sort(sorted.rbegin(), sorted.rend());
    int32_t experts[3];
    float weights[3];
    route_token(c, logits.data(), nullptr, experts, weights);
    for (int i = 0; i < 3; ++i) EXPECT_GE(group_max[size_t(experts[i] / 4)], sorted[1]) << "seed " << seed;
  }
}

TEST(MoeRoutingTest, NoauxTcBiasSteersSelectionButNotWeights) {
  Config c = routing_config(TopkMethod::NoauxTc, ScoringFunc::Sigmoid, "deepseek_v3");
  c.n_group = 1;
  c.topk_group = 1;
  c.norm_topk_prob = true;
  const auto logits = testing::random_vector(16, 3, 1.0f);
  std::vector<float> bias(16, 0.0f);
  bias[5] = bias[9] = bias[12] = 10.0f;  // force these three
  int32_t experts[3];
  float weights[3];
  route_token(c, logits.data(), bias.data(), experts, weights);
  std::vector<int32_t> chosen(experts, experts + 3);
  std::sort(chosen.begin(), chosen.end());
  EXPECT_EQ(chosen, (std::vector<int32_t>{5, 9, 12}));
  const auto scores = scores_of(c, logits);
  const double total = scores[5] + scores[9] + scores[12];
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(weights[i], scores[size_t(experts[i])] / total * 2.5, 1e-5);
}

}  // namespace
}  // namespace deepmoe
