// The Trainer on a tiny random model: a run cut by a checkpoint and resumed ends exactly where
// the uninterrupted run does, training lowers the loss on learnable data, a checkpoint of other
// settings is refused; and the balance-bias update and load statistics on loads worked by hand.
#include "train/trainer.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "model/config.h"

namespace deepmoe::train {
namespace {

namespace fs = std::filesystem;

// V3 routing (noaux_tc, so the balance bias exists) over 4 experts; layer 0 dense, layer 1 MoE.
constexpr const char* kConfig = R"({
  "model_type": "deepseek_v3", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
  "moe_intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "q_lora_rank": 16,
  "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 8,
  "n_routed_experts": 4, "n_shared_experts": 1, "num_experts_per_tok": 2, "first_k_dense_replace": 1,
  "n_group": 2, "topk_group": 1, "topk_method": "noaux_tc", "scoring_func": "sigmoid"})";

class TrainerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("deepmoe_trainer_test_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::ofstream(dir_ / "config.json") << kConfig;
    // A short cycle of token ids: learnable in a few steps, and every window differs from the next.
    std::ofstream tokens(dir_ / "tokens.u32", std::ios::binary);
    for (uint32_t i = 0; i < 2000; ++i) {
      const uint32_t id = (i * 7 + i / 13) % 23;
      tokens.write(reinterpret_cast<const char*>(&id), sizeof id);
    }
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Two micro-batches a step, checkpoints every 2 steps, the balance bias moving, validation.
  TrainerOptions options(const std::string& out, int64_t steps) const {
    TrainerOptions o;
    o.config_path = (dir_ / "config.json").string();
    o.data_path = (dir_ / "tokens.u32").string();
    o.val_data_path = o.data_path;
    o.out_dir = (dir_ / out).string();
    o.seq = 16;
    o.batch = 2;
    o.grad_accum = 2;
    o.steps = steps;
    o.seed = 3;
    o.schedule = Schedule::Cosine;
    o.lr = 1e-2;
    o.warmup = 2;
    o.bias_update = 1e-3;
    o.eval_every = 3;
    o.save_every = 2;
    o.keep_last = 2;
    o.threads = 2;
    return o;
  }

  static std::vector<double> metric(const fs::path& metrics_jsonl, const char* name) {
    std::vector<double> values;
    std::ifstream in(metrics_jsonl);
    for (std::string line; std::getline(in, line);) {
      const nlohmann::json j = nlohmann::json::parse(line);
      if (j.contains(name)) values.push_back(j[name].get<double>());
    }
    return values;
  }

  fs::path dir_;
};

TEST_F(TrainerTest, ResumedRunEndsWithTheUninterruptedRunsParametersBitForBit) {
  Trainer full(options("full", 6));
  std::vector<double> full_losses;
  full.run([&](const StepReport& r) { full_losses.push_back(r.loss); });
  ASSERT_EQ(full_losses.size(), 6u);

  // The same run dies during step 4, after its step-4 checkpoint (the cosine schedule's length is
  // the whole run's, so the run cannot simply be given fewer steps).
  struct Killed {};
  EXPECT_THROW(Trainer(options("part", 6)).run([](const StepReport& r) {
    if (r.step == 4) throw Killed{};
  }),
               Killed);
  TrainerOptions resume = options("part", 6);
  resume.resume = true;
  Trainer resumed(resume);
  ASSERT_TRUE(resumed.resumed().has_value());
  EXPECT_EQ(fs::path(resumed.resumed()->dir).filename(), "step-4");
  EXPECT_TRUE(resumed.resumed()->skipped.empty());
  EXPECT_EQ(resumed.first_step(), 4);
  std::vector<int64_t> steps;
  resumed.run([&](const StepReport& r) { steps.push_back(r.step); });

  EXPECT_EQ(steps, (std::vector<int64_t>{4, 5}));
  // Bit for bit, the balance bias (moved by the update, not the optimizer) too.
  EXPECT_TRUE(resumed.parameters().values() == full.parameters().values());
  // metrics.jsonl keeps the killed run's lines of steps 0-3 and adds steps 4 and 5.
  EXPECT_EQ(metric(dir_ / "part" / "metrics.jsonl", "loss"), full_losses);
  EXPECT_EQ(metric(dir_ / "part" / "metrics.jsonl", "val_loss"), metric(dir_ / "full" / "metrics.jsonl", "val_loss"));
  EXPECT_EQ(metric(dir_ / "full" / "metrics.jsonl", "val_loss").size(), 2u);  // after steps 3 and 6
  std::vector<std::string> checkpoints;
  for (const auto& entry : fs::directory_iterator(dir_ / "full" / "checkpoints"))
    checkpoints.push_back(entry.path().filename().string());
  std::sort(checkpoints.begin(), checkpoints.end());
  EXPECT_EQ(checkpoints, (std::vector<std::string>{"step-4", "step-6"}));
  EXPECT_TRUE(Parameters::load((dir_ / "full").string()).values() == full.parameters().values());
}

TEST_F(TrainerTest, LossFallsOnARepeatingSequence) {
  TrainerOptions o = options("run", 12);
  o.save_every = 0;
  std::vector<StepReport> reports;
  Trainer trainer(o);
  const TrainSummary summary = trainer.run([&](const StepReport& r) { reports.push_back(r); });
  ASSERT_EQ(reports.size(), 12u);
  EXPECT_LT(reports.back().loss, 0.7 * reports.front().loss)
      << "first " << reports.front().loss << ", last " << reports.back().loss;
  for (const StepReport& r : reports) {
    EXPECT_TRUE(std::isfinite(r.grad_norm));
    ASSERT_EQ(r.expert_load.size(), 1u);  // one MoE layer
    EXPECT_EQ(r.val_loss.has_value(), (r.step + 1) % 3 == 0);
  }
  ASSERT_TRUE(summary.val_loss.has_value());
  EXPECT_EQ(*summary.val_loss, *reports.back().val_loss);
  EXPECT_GT(summary.activation_bytes, 0u);
  EXPECT_FALSE(fs::exists(dir_ / "run" / "checkpoints"));
  // The balance bias moved only by whole steps of bias_update (the optimizer leaves it alone).
  const std::string bias = "model.layers.1.mlp.gate.e_score_correction_bias";
  const Parameters initial = Parameters::load((dir_ / "run" / "initial").string());
  double moved = 0;
  for (int i = 0; i < 4; ++i) {
    const double steps = (trainer.parameters().value(bias)[i] - initial.value(bias)[i]) / o.bias_update;
    EXPECT_NEAR(steps, std::round(steps), 1e-2);
    moved += std::abs(steps);
  }
  EXPECT_GT(moved, 0);
  for (const char* file : {"model.safetensors", "config.json", "loss.svg", "lr.svg", "expert_load.svg"})
    EXPECT_TRUE(fs::exists(dir_ / "run" / file)) << file;
}

TEST_F(TrainerTest, RefusesToResumeACheckpointMadeWithOtherSettings) {
  Trainer(options("run", 2)).run();
  TrainerOptions other = options("run", 4);
  other.resume = true;
  other.batch = 4;
  try {
    Trainer trainer(other);
    ADD_FAILURE() << "resumed a checkpoint made with --batch 2 at --batch 4";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("was made with different settings"), std::string::npos) << e.what();
  }
}

TEST(ExpertBalanceTest, BiasMovesAgainstEachExpertsLoad) {
  nlohmann::json json = nlohmann::json::parse(kConfig);
  json["num_hidden_layers"] = 3;  // layers 1 and 2 are MoE
  const Config config = parse_config(json);
  Parameters p(config);
  ASSERT_EQ(p.value("model.layers.0.mlp.gate.e_score_correction_bias"), nullptr);  // dense
  // Layer 1: mean 2, so the expert chosen 3 times moves down, the one chosen once up, the two at
  // the mean stay. Layer 2: mean 2 again, from 0 / 4 / 4 / 0.
  update_balance_bias(config, p, {{3, 1, 2, 2}, {0, 4, 4, 0}}, 0.25);
  const float* layer1 = p.value("model.layers.1.mlp.gate.e_score_correction_bias");
  const float* layer2 = p.value("model.layers.2.mlp.gate.e_score_correction_bias");
  EXPECT_EQ(std::vector<float>(layer1, layer1 + 4), (std::vector<float>{-0.25f, 0.25f, 0.0f, 0.0f}));
  EXPECT_EQ(std::vector<float>(layer2, layer2 + 4), (std::vector<float>{0.25f, -0.25f, -0.25f, 0.25f}));
  // Steps add up; a perfectly even load moves nothing.
  update_balance_bias(config, p, {{3, 1, 2, 2}, {2, 2, 2, 2}}, 0.25);
  EXPECT_EQ(std::vector<float>(layer1, layer1 + 4), (std::vector<float>{-0.5f, 0.5f, 0.0f, 0.0f}));
  EXPECT_EQ(std::vector<float>(layer2, layer2 + 4), (std::vector<float>{0.25f, -0.25f, -0.25f, 0.25f}));
}

TEST(ExpertBalanceTest, LayersWithoutTheBiasAreLeftAlone) {
  nlohmann::json json = nlohmann::json::parse(kConfig);
  json["topk_method"] = "group_limited_greedy";
  json["scoring_func"] = "softmax";
  const Config config = parse_config(json);
  Parameters p(config);
  ASSERT_EQ(p.value("model.layers.1.mlp.gate.e_score_correction_bias"), nullptr);
  const std::vector<float> before = p.values();
  update_balance_bias(config, p, {{3, 1, 2, 2}}, 0.25);
  EXPECT_EQ(p.values(), before);
}

TEST(ExpertBalanceTest, LoadStatsOfALoadWorkedByHand) {
  // Mean 2, busiest 3; variance (1 + 1 + 0 + 0) / 4 = 0.5.
  const ExpertLoadStats stats = expert_load_stats({3, 1, 2, 2});
  EXPECT_DOUBLE_EQ(stats.max_over_mean, 1.5);
  EXPECT_DOUBLE_EQ(stats.cv, std::sqrt(0.5) / 2.0);
  EXPECT_DOUBLE_EQ(expert_load_stats({5, 5, 5, 5}).cv, 0.0);
}

}  // namespace
}  // namespace deepmoe::train
