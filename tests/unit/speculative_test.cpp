// Speculative decoding with the MTP module: greedy output is plain decoding's token for token,
// and with sampling the output keeps the model's distribution (the acceptance rule alone, and
// the whole decoder on a model against the exact distribution of its second token).
#include "infer/speculative.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>

#include "core/error.h"
#include "kernels/ops.h"
#include "model/random_init.h"
#include "mtp_test_model.h"

namespace deepmoe {
namespace {

namespace fs = std::filesystem;

constexpr const char* kConfig = R"({
  "model_type": "deepseek_v3", "vocab_size": 61, "hidden_size": 48, "intermediate_size": 64,
  "moe_intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4, "q_lora_rank": 16,
  "kv_lora_rank": 24, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 12,
  "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 2, "first_k_dense_replace": 1,
  "n_group": 4, "topk_group": 2, "num_nextn_predict_layers": 1})";

class SpeculativeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("deepmoe_speculative_test_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    std::ofstream(dir_ / "config.json") << kConfig;
    write_random_checkpoint((dir_ / "config.json").string(), (dir_ / "model").string(), 3, DType::F32);
    weights_ = ModelWeights::load((dir_ / "model").string()).release();
    agreeing_ = testing::agreeing_mtp_model(dir_ / "tied", kConfig, 5).release();
  }
  static void TearDownTestSuite() {
    delete weights_;
    delete agreeing_;
    fs::remove_all(dir_);
  }

  static std::vector<int32_t> run(Model& model, std::span<const int32_t> prompt, int64_t n, const SamplingParams& p,
                                  int64_t drafts, GenerationStats* stats = nullptr, Model* draft_model = nullptr) {
    std::vector<int32_t> out;
    const Speculation speculation{drafts, draft_model};
    const GenerationStats s = generate(
        model, prompt, n, p,
        [&](int32_t t) {
          out.push_back(t);
          return true;
        },
        &speculation);
    if (stats) *stats = s;
    return out;
  }
  static void greedy_equals_plain(const ModelWeights& weights);

  static inline fs::path dir_;
  static inline ModelWeights* weights_ = nullptr;
  static inline ModelWeights* agreeing_ = nullptr;
};

TEST_F(SpeculativeTest, TheModuleLoadsFromTheCheckpoint) {
  ASSERT_EQ(weights_->config.num_nextn_predict_layers, 1);
  ASSERT_EQ(weights_->mtp.size(), 1u);
  EXPECT_NE(weights_->mtp[0].eh_proj.data, nullptr);
  EXPECT_EQ(weights_->mtp[0].eh_proj.cols, 2 * weights_->config.hidden_size);
  EXPECT_TRUE(weights_->ignored_tensors.empty());
  EXPECT_GT(weights_->mtp_parameter_count(), 0);
}

TEST_F(SpeculativeTest, GreedyGivesPlainDecodingsTokens) {
  for (const ModelWeights* weights : {weights_, agreeing_}) greedy_equals_plain(*weights);
}

void SpeculativeTest::greedy_equals_plain(const ModelWeights& weights) {
  Model model(weights, 2);
  SamplingParams greedy;
  int64_t accepted = 0, drafted = 0;
  for (const size_t prompt_length : {size_t(3), size_t(600)}) {  // 600: the MTP prefill in two chunks
    std::vector<int32_t> prompt(prompt_length);
    for (size_t i = 0; i < prompt_length; ++i) prompt[i] = int32_t((i * 13 + 7) % 61);
    for (const float penalty : {1.0f, 1.3f}) {
      greedy.repetition_penalty = penalty;
      const std::vector<int32_t> plain = run(model, prompt, 48, greedy, 0);
      ASSERT_EQ(plain.size(), 48u);
      for (const int64_t k : {1, 2, 3, 5}) {
        GenerationStats stats;
        EXPECT_EQ(run(model, prompt, 48, greedy, k, &stats), plain)
            << "K " << k << ", prompt " << prompt_length << ", penalty " << penalty;
        EXPECT_GT(stats.verify_steps, 0);
        EXPECT_EQ(stats.drafted, stats.verify_steps * k);
        accepted += stats.accepted;
        drafted += stats.drafted;
      }
    }
  }
  if (&weights == agreeing_) {  // rollback after partial acceptance was exercised
    EXPECT_GT(accepted, drafted / 4);
    EXPECT_LT(accepted, drafted);
  }
}

// A draft model through the same verify path: another random model (drafts mostly rejected), and
// the model itself (every draft accepted: the bonus token each step).
TEST_F(SpeculativeTest, ADraftModelGivesPlainDecodingsTokens) {
  Model model(*weights_, 2), other(*agreeing_, 1), itself(*weights_, 1);
  SamplingParams greedy;
  const std::vector<int32_t> prompt = {9, 3, 27, 40, 11};
  const std::vector<int32_t> plain = run(model, prompt, 40, greedy, 0);
  for (const int64_t k : {1, 3, 4}) {
    GenerationStats stats;
    EXPECT_EQ(run(model, prompt, 40, greedy, k, &stats, &other), plain) << "K " << k;
    EXPECT_EQ(run(model, prompt, 40, greedy, k, &stats, &itself), plain) << "K " << k;
    EXPECT_EQ(stats.accepted, stats.drafted) << "the model drafting for itself, K " << k;
  }
}

// Drafting among the first ids only (--draft-vocab) changes acceptance, never the output.
TEST_F(SpeculativeTest, ASmallerDraftVocabularyGivesTheSameTokens) {
  Model model(*agreeing_, 2);
  SamplingParams greedy;
  const std::vector<int32_t> prompt = {9, 3, 27, 40, 11};
  const std::vector<int32_t> plain = run(model, prompt, 40, greedy, 0);
  for (const int64_t n : {61, 30, 5}) {
    model.set_draft_vocabulary(n);
    GenerationStats stats;
    EXPECT_EQ(run(model, prompt, 40, greedy, 2, &stats), plain) << "draft vocabulary " << n;
    EXPECT_GT(stats.verify_steps, 0);
  }
  EXPECT_THROW(model.set_draft_vocabulary(62), Error);
  EXPECT_THROW(model.set_draft_vocabulary(0), Error);
}

TEST_F(SpeculativeTest, AModelWithoutModulesIsRefused) {
  fs::create_directories(dir_ / "plain");
  std::string config = kConfig;
  config.replace(config.find("\"num_nextn_predict_layers\": 1"), 29, "\"num_nextn_predict_layers\": 0");
  std::ofstream(dir_ / "plain" / "config.json") << config;
  write_random_checkpoint((dir_ / "plain" / "config.json").string(), (dir_ / "plain" / "model").string(), 3,
                          DType::F32);
  const auto plain = ModelWeights::load((dir_ / "plain" / "model").string());
  Model model(*plain, 1);
  const std::vector<int32_t> prompt = {1, 2};
  EXPECT_THROW(run(model, prompt, 4, {}, 2), Error);
}

// Pearson's chi-square of counts against probabilities, bins with expected counts under 5 merged.
double chi_square(const std::vector<int64_t>& counts, const std::vector<double>& p, int64_t n, int& dof) {
  double statistic = 0, pending_expected = 0, pending_count = 0;
  dof = -1;
  for (size_t i = 0; i < p.size(); ++i) {
    pending_expected += p[i] * double(n);
    pending_count += double(counts[i]);
    if (pending_expected < 5 && i + 1 < p.size()) continue;
    if (pending_expected > 0) {
      statistic += (pending_count - pending_expected) * (pending_count - pending_expected) / pending_expected;
      ++dof;
    }
    pending_expected = pending_count = 0;
  }
  return statistic;
}

TEST(AcceptDraft, KeepsTheTargetDistributionWhateverTheDraft) {
  const std::vector<float> p = {0.05f, 0.4f, 0.0f, 0.25f, 0.2f, 0.1f};
  SamplingParams params;
  params.temperature = 1.0f;
  params.seed = 9;
  Sampler sampler(params);
  constexpr int64_t kDraws = 200000;
  for (const int32_t draft : {1, 3, 0, 2}) {  // the likeliest, a middling one, an unlikely one, an impossible one
    std::vector<int64_t> counts(p.size(), 0);
    int64_t accepted = 0;
    for (int64_t i = 0; i < kDraws; ++i) {
      bool kept = false;
      ++counts[size_t(accept_draft(p, draft, sampler, kept))];
      accepted += kept;
    }
    int dof = 0;
    const double statistic = chi_square(counts, std::vector<double>(p.begin(), p.end()), kDraws, dof);
    EXPECT_LT(statistic, 30.0) << "draft " << draft << ": chi-square " << statistic << " on " << dof << " dof";
    EXPECT_EQ(counts[2], 0);
    // Accepted exactly as often as the target gives the draft: p[d] (binomial sd < 0.0012).
    EXPECT_NEAR(double(accepted) / kDraws, p[size_t(draft)], 0.006) << "draft " << draft;
  }
}

// The second generated token, through the whole speculative decoder (MTP prefill, drafts, the
// verify pass, acceptance, rollback), is distributed as the model says: Σ_t1 p(t1) p(t2 | t1).
// On the agreeing model (three drafts in four accepted), at a temperature that makes its choices
// close calls: accepting drafts 1.2 times as often as the rule says fails this (measured).
TEST_F(SpeculativeTest, SamplingKeepsTheModelsDistribution) {
  const ModelWeights* weights = agreeing_;
  Model model(*weights, 2);
  const std::vector<int32_t> prompt = {4, 17, 33, 8};
  SamplingParams params;
  params.temperature = 4.0f;
  params.top_p = 0.95f;
  const int64_t vocab = weights->config.vocab_size;

  // The exact distribution, from the sampler's own filtered distributions of plain passes.
  const auto next_distribution = [&](const std::vector<int32_t>& tokens) {
    LatentCache cache(weights->config, int64_t(tokens.size()));
    std::vector<float> logits(static_cast<size_t>(vocab));
    model.forward(tokens, cache, LogitsFor::LastToken, logits.data());
    Sampler sampler(params);
    const std::span<const float> p = sampler.distribution(logits, tokens);
    return std::vector<double>(p.begin(), p.end());
  };
  const std::vector<double> first = next_distribution(prompt);
  std::vector<double> second(size_t(vocab), 0.0);
  for (int32_t t1 = 0; t1 < vocab; ++t1) {
    if (first[size_t(t1)] == 0) continue;
    std::vector<int32_t> extended = prompt;
    extended.push_back(t1);
    const std::vector<double> given = next_distribution(extended);
    for (int64_t t = 0; t < vocab; ++t) second[size_t(t)] += first[size_t(t1)] * given[size_t(t)];
  }

  constexpr int64_t kRuns = 6000;
  std::vector<int64_t> counts(size_t(vocab), 0);
  int64_t accepted = 0, drafted = 0;
  for (int64_t i = 0; i < kRuns; ++i) {
    params.seed = uint64_t(1000 + i);
    GenerationStats stats;
    const std::vector<int32_t> out = run(model, prompt, 2, params, 2, &stats);
    ASSERT_EQ(out.size(), 2u);
    ++counts[size_t(out[1])];
    accepted += stats.accepted;
    drafted += stats.drafted;
  }
  int dof = 0;
  const double statistic = chi_square(counts, second, kRuns, dof);
  // Chi-square's 99.99th percentile is below dof + 4.5·sqrt(2·dof) + 10 for these dof.
  EXPECT_LT(statistic, dof + 4.5 * std::sqrt(2.0 * dof) + 10) << "chi-square " << statistic << " on " << dof << " dof";
  EXPECT_GT(dof, 3);
  // Both of the rule's paths ran: drafts accepted and drafts replaced.
  EXPECT_GT(accepted, 0);
  EXPECT_LT(accepted, drafted);
}

}  // namespace
}  // namespace deepmoe
