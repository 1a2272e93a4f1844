// Two models and a trainer in one process, as GRPO will hold them (the policy, a reference model
// and the sampler at once): each runs with its own context, so none changes another's results.
// Before issue 19, a TrainGraph set process-wide pool, precision and bf16 weights in its
// constructor, and the server's batch invariance was a global switch.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "kernels/gemm_bf16.h"
#include "model/model.h"
#include "model/random_init.h"
#include "test_util.h"
#include "train/model_train.h"

namespace deepmoe {
namespace {

namespace fs = std::filesystem;

constexpr const char* kConfig = R"({
  "model_type": "deepseek_v3", "vocab_size": 97, "hidden_size": 48, "intermediate_size": 80,
  "moe_intermediate_size": 24, "num_hidden_layers": 3, "num_attention_heads": 4, "q_lora_rank": 16,
  "kv_lora_rank": 24, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 12,
  "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 2, "first_k_dense_replace": 1,
  "n_group": 4, "topk_group": 2, "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": true,
  "max_position_embeddings": 256})";

std::vector<float> logits_of(Model& model, const std::vector<int32_t>& ids) {
  LatentCache cache(model.config(), int64_t(ids.size()));
  std::vector<float> logits(ids.size() * size_t(model.config().vocab_size));
  model.forward(ids, cache, LogitsFor::AllTokens, logits.data());
  return logits;
}

TEST(OneProcess, TwoModelsAndATrainerKeepTheirOwnSettings) {
  const fs::path dir = fs::temp_directory_path() / ("deepmoe_one_process_test_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::ofstream((dir / "config.json").string()) << kConfig;
  write_random_checkpoint((dir / "config.json").string(), (dir / "model").string(), 5, DType::F32);
  const auto weights = ModelWeights::load((dir / "model").string());
  std::vector<int32_t> ids(40);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t((i * 29 + 3) % 97);

  Model policy(*weights, 2);
  ModelOptions serving;
  serving.threads = 2;
  serving.attention_mode = AttentionMode::Absorbed;
  serving.context.batch_invariant = true;
  Model sampler(*weights, serving);
  const std::vector<float> policy_before = logits_of(policy, ids), sampler_before = logits_of(sampler, ids);
  // The two forms of attention and kernels agree to rounding, but not bit for bit: the test can
  // tell whose settings a model ran with.
  EXPECT_LT(testing::relative_error(sampler_before, policy_before), 1e-4);
  EXPECT_NE(0, std::memcmp(sampler_before.data(), policy_before.data(), policy_before.size() * sizeof(float)));

  train::Parameters p = train::Parameters::load((dir / "model").string());
  const GemmPrecision precision = cpu_has_bf16_gemm() ? GemmPrecision::BF16 : GemmPrecision::F32;
  train::TrainGraph graph(p.config(), 1, precision);
  std::vector<int32_t> targets(ids.begin() + 1, ids.end());
  targets.push_back(7);
  p.zero_grads(graph.context().pool());
  const train::StepLoss loss = graph.run(p, ids, targets, 2, 20, 0.01, true);
  EXPECT_GT(loss.loss, 0.0);

  // With the trainer alive (its bf16 precision and one-thread pool included), each model still
  // computes exactly what it did alone.
  EXPECT_EQ(logits_of(policy, ids), policy_before);
  EXPECT_EQ(logits_of(sampler, ids), sampler_before);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace deepmoe
