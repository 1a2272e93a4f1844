#include "infer/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "test_util.h"

namespace deepmoe {
namespace {

int32_t argmax(const std::vector<float>& v) { return int32_t(std::max_element(v.begin(), v.end()) - v.begin()); }

TEST(SamplerTest, TemperatureZeroIsArgmax) {
  const auto logits = testing::random_vector(1000, 1);
  Sampler sampler({});
  auto copy = logits;
  EXPECT_EQ(sampler.sample(copy, {}), argmax(logits));
}

TEST(SamplerTest, SameSeedSameDraws) {
  SamplingParams params;
  params.temperature = 1.0f;
  params.seed = 42;
  Sampler a(params), b(params);
  const auto logits = testing::random_vector(500, 2);
  for (int i = 0; i < 20; ++i) {
    auto la = logits, lb = logits;
    EXPECT_EQ(a.sample(la, {}), b.sample(lb, {}));
  }
}

TEST(SamplerTest, DrawFrequenciesFollowTheSoftmax) {
  const std::vector<float> logits = {0.0f, 1.0f, 2.0f, -1.0f};
  SamplingParams params;
  params.temperature = 1.0f;
  params.seed = 7;
  Sampler sampler(params);
  std::vector<int> counts(4);
  const int draws = 20000;
  for (int i = 0; i < draws; ++i) {
    auto copy = logits;
    ++counts[size_t(sampler.sample(copy, {}))];
  }
  double total = 0.0;
  for (float l : logits) total += std::exp(double(l));
  for (size_t i = 0; i < 4; ++i) {
    const double p = std::exp(double(logits[i])) / total;
    EXPECT_NEAR(counts[i] / double(draws), p, 4 * std::sqrt(p * (1 - p) / draws) + 1e-3) << "token " << i;
  }
}

TEST(SamplerTest, TopKTopPAndMinPRestrictTheCandidates) {
  const std::vector<float> logits = {5.0f, 4.9f, 0.0f, -1.0f, 4.8f};
  for (int mode = 0; mode < 3; ++mode) {
    SamplingParams params;
    params.temperature = 1.0f;
    params.seed = uint64_t(mode);
    if (mode == 0) params.top_k = 2;
    if (mode == 1) params.top_p = 0.5f;   // 0 alone has ~35%; 0 and 1 reach the mass
    if (mode == 2) params.min_p = 0.95f;  // only tokens within 5% of the best
    Sampler sampler(params);
    for (int i = 0; i < 300; ++i) {
      auto copy = logits;
      const int32_t token = sampler.sample(copy, {});
      if (mode == 2) EXPECT_TRUE(token == 0 || token == 1) << token;
      else EXPECT_TRUE(token == 0 || token == 1) << "mode " << mode << " token " << token;
    }
  }
}

TEST(SamplerTest, RepetitionPenaltyDemotesSeenTokens) {
  std::vector<float> logits = {2.0f, 1.9f, -1.0f};
  SamplingParams params;
  params.repetition_penalty = 1.5f;
  Sampler sampler(params);
  const std::vector<int32_t> history = {0, 0, 2};
  EXPECT_EQ(sampler.sample(logits, history), 1);
  EXPECT_FLOAT_EQ(logits[0], 2.0f / 1.5f);
  EXPECT_FLOAT_EQ(logits[2], -1.5f);
}

TEST(SamplerTest, OutOfRangeParametersAreRejected) {
  SamplingParams bad;
  bad.temperature = -1.0f;
  EXPECT_THROW(validate(bad), Error);
  bad = {};
  bad.top_p = 0.0f;
  EXPECT_THROW(validate(bad), Error);
  bad = {};
  bad.min_p = 2.0f;
  EXPECT_THROW(validate(bad), Error);
  bad = {};
  bad.repetition_penalty = 0.0f;
  EXPECT_THROW(validate(bad), Error);
}

}  // namespace
}  // namespace deepmoe
