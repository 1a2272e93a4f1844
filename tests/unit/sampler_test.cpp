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

// The candidate set by its definition: softmax at the temperature, sort everything best first
// (ties: lower id first), keep top_k, then the shortest prefix reaching top_p (renormalized
// over the top_k), then the tokens at least min_p times as likely as the best.
std::vector<double> reference_distribution(const std::vector<float>& logits, const SamplingParams& p) {
  const size_t n = logits.size();
  std::vector<int32_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = int32_t(i);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return logits[size_t(a)] > logits[size_t(b)] || (logits[size_t(a)] == logits[size_t(b)] && a < b);
  });
  size_t kept = p.top_k > 0 ? std::min(n, size_t(p.top_k)) : n;
  std::vector<double> prob(n, 0.0);
  double total = 0.0;
  for (size_t i = 0; i < kept; ++i)
    total += prob[size_t(order[i])] =
        std::exp((logits[size_t(order[i])] - logits[size_t(order[0])]) / double(p.temperature));
  for (size_t i = 0; i < kept; ++i) prob[size_t(order[i])] /= total;
  if (p.top_p < 1.0f) {
    double mass = 0.0;
    for (size_t i = 0; i < kept; ++i)
      if ((mass += prob[size_t(order[i])]) >= p.top_p) {
        kept = i + 1;
        break;
      }
  }
  std::vector<double> out(n, 0.0);
  double kept_mass = 0.0;
  for (size_t i = 0; i < kept; ++i)
    if (prob[size_t(order[i])] >= p.min_p * prob[size_t(order[0])])
      kept_mass += out[size_t(order[i])] = prob[size_t(order[i])];
  for (double& q : out) q /= kept_mass;
  return out;
}

TEST(SamplerTest, LargeVocabulariesDrawFromTheDefinedCandidateSet) {
  // 3000 tokens, spread wide (a few tokens hold the mass) or narrow (hundreds share each eighth
  // of a nat around the top_p boundary), with runs of equal logits (ties at the boundary);
  // every mix of top_k, top_p and min_p: nothing outside the set is ever drawn, and the likely
  // tokens come up as often as the renormalized softmax says.
  struct Case {
    float spread, temperature;
    int64_t top_k;
    float top_p, min_p;
  };
  for (const Case c :
       {Case{4.0f, 1.0f, 0, 0.9f, 0.0f}, Case{4.0f, 0.7f, 0, 0.3f, 0.0f}, Case{4.0f, 1.3f, 0, 0.97f, 0.01f},
        Case{4.0f, 1.0f, 0, 1.0f, 0.05f}, Case{4.0f, 1.0f, 200, 0.8f, 0.0f}, Case{4.0f, 2.0f, 0, 1.0f, 0.0f},
        Case{0.5f, 1.0f, 0, 0.9f, 0.0f}, Case{0.5f, 0.5f, 0, 0.5f, 0.3f}}) {
    std::vector<float> logits = testing::random_vector(3000, 9, c.spread);
    for (size_t i = 0; i < logits.size(); i += 7) logits[i] = std::round(logits[i] * 4) / 4;
    SamplingParams params;
    params.temperature = c.temperature;
    params.top_k = c.top_k;
    params.top_p = c.top_p;
    params.min_p = c.min_p;
    params.seed = 3;
    const std::vector<double> expected = reference_distribution(logits, params);
    Sampler sampler(params);
    std::vector<int> counts(logits.size());
    const int draws = 20000;
    for (int i = 0; i < draws; ++i) {
      auto copy = logits;
      ++counts[size_t(sampler.sample(copy, {}))];
    }
    int outside = 0, checked = 0;
    for (size_t t = 0; t < logits.size(); ++t) {
      if (expected[t] == 0.0) {
        outside += counts[t];
        continue;
      }
      if (expected[t] < 0.002) continue;
      ++checked;
      const double q = expected[t];
      EXPECT_NEAR(counts[t] / double(draws), q, 5 * std::sqrt(q * (1 - q) / draws))
          << "token " << t << " spread " << c.spread;
    }
    EXPECT_EQ(outside, 0) << "spread " << c.spread << " T=" << c.temperature << " top_k=" << c.top_k
                          << " top_p=" << c.top_p << " min_p=" << c.min_p;
    EXPECT_GT(checked, 0);
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
