// Whole-model properties that need no reference: the two MLA forms agree, decoding token by
// token reproduces the full pass, results do not depend on the thread count, and the loader
// names what is wrong with a checkpoint.
#include "model/model.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/dtype.h"
#include "core/error.h"
#include "io/mapped_file.h"
#include "io/safetensors.h"
#include "model/random_init.h"
#include "test_util.h"

namespace deepmoe {
namespace {

namespace fs = std::filesystem;

constexpr const char* kSmallConfig = R"({
  "model_type": "deepseek_v3", "vocab_size": 101, "hidden_size": 64, "intermediate_size": 96,
  "moe_intermediate_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4, "q_lora_rank": 24,
  "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 20,
  "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 2, "first_k_dense_replace": 1,
  "n_group": 4, "topk_group": 2, "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": true,
  "rope_scaling": {"type": "yarn", "factor": 4, "original_max_position_embeddings": 16, "mscale": 1.0,
                   "mscale_all_dim": 0.8}})";

// A fresh random checkpoint in a temporary directory per test.
class ModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("deepmoe_model_test_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    const std::string config_path = (dir_ / "source_config.json").string();
    std::ofstream(config_path) << kSmallConfig;
    write_random_checkpoint(config_path, (dir_ / "model").string(), 11, DType::F32);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::vector<int32_t> tokens(size_t n) const {
    std::vector<int32_t> ids(n);
    for (size_t i = 0; i < n; ++i) ids[i] = int32_t((i * 37 + 5) % 101);
    return ids;
  }

  std::vector<float> full_pass(const ModelWeights& weights, const std::vector<int32_t>& ids, int threads,
                               std::optional<AttentionMode> mode) {
    ModelOptions options;
    options.threads = threads;
    options.attention_mode = mode;
    Model model(weights, options);
    LatentCache cache(weights.config, int64_t(ids.size()));
    std::vector<float> logits(ids.size() * size_t(weights.config.vocab_size));
    model.forward(ids, cache, LogitsFor::AllTokens, logits.data());
    return logits;
  }

  fs::path dir_;
};

TEST_F(ModelTest, MlaAbsorbedFormMatchesExpandedForm) {
  const auto weights = ModelWeights::load((dir_ / "model").string());
  const auto ids = tokens(40);
  const auto expanded = full_pass(*weights, ids, 2, AttentionMode::Expanded);
  const auto absorbed = full_pass(*weights, ids, 2, AttentionMode::Absorbed);
  EXPECT_LT(testing::relative_error(absorbed, expanded), 1e-5);
}

TEST_F(ModelTest, MlaDecodeMatchesFullPass) {
  const auto weights = ModelWeights::load((dir_ / "model").string());
  const auto ids = tokens(40);
  const int64_t vocab = weights->config.vocab_size, prefill = 17;
  const auto full = full_pass(*weights, ids, 2, AttentionMode::Expanded);

  Model model(*weights, 2);
  LatentCache cache(weights->config, int64_t(ids.size()));
  std::vector<float> incremental(full.size());
  model.forward(std::span(ids).first(prefill), cache, LogitsFor::AllTokens, incremental.data());
  for (size_t t = size_t(prefill); t < ids.size(); ++t)
    model.forward(std::span(ids).subspan(t, 1), cache, LogitsFor::LastToken, incremental.data() + t * size_t(vocab));
  for (size_t t = 0; t < ids.size(); ++t) {
    const std::vector<float> a(incremental.begin() + long(t * vocab), incremental.begin() + long((t + 1) * vocab));
    const std::vector<float> b(full.begin() + long(t * vocab), full.begin() + long((t + 1) * vocab));
    EXPECT_LT(testing::relative_error(a, b), 1e-5) << "position " << t;
  }
}

TEST_F(ModelTest, LogitsAreBitIdenticalAcrossThreadCounts) {
  const auto weights = ModelWeights::load((dir_ / "model").string());
  for (size_t n : {3u, 40u}) {
    const auto ids = tokens(n);
    const auto one = full_pass(*weights, ids, 1, std::nullopt);
    const auto two = full_pass(*weights, ids, 2, std::nullopt);
    const auto three = full_pass(*weights, ids, 3, std::nullopt);
    EXPECT_EQ(std::memcmp(one.data(), two.data(), one.size() * 4), 0) << n << " tokens";
    EXPECT_EQ(std::memcmp(one.data(), three.data(), one.size() * 4), 0) << n << " tokens";
  }
}

TEST_F(ModelTest, RoundingToBf16GivesEveryMatrixButTheRoutersTheBitsABf16CheckpointStores) {
  // The same random values written as BF16 by the checkpoint writer (round to nearest even, as
  // PyTorch's .to(bfloat16)) are the reference for each rounded matrix.
  const std::string config_path = (dir_ / "source_config.json").string();
  write_random_checkpoint(config_path, (dir_ / "bf16").string(), 11, DType::BF16);
  const auto f32 = ModelWeights::load((dir_ / "model").string());
  const auto rounded = ModelWeights::load((dir_ / "model").string());
  const auto bf16 = ModelWeights::load((dir_ / "bf16").string());
  const int64_t count = rounded->round_to_bf16();
  const auto names = rounded->named_matrices(), reference = bf16->named_matrices(), original = f32->named_matrices();
  ASSERT_EQ(names.size(), reference.size());
  int64_t routers = 0;
  for (size_t i = 0; i < names.size(); ++i) {
    const auto& [name, w] = names[i];
    ASSERT_EQ(name, reference[i].first);
    const size_t n = size_t(w->rows * w->cols);
    if (name.ends_with("mlp.gate.weight")) {  // the router computes in f32 and keeps its values
      ++routers;
      EXPECT_EQ(w->format, WeightFormat::F32) << name;
      EXPECT_EQ(0, std::memcmp(w->data, original[i].second->data, n * 4)) << name;
      continue;
    }
    ASSERT_EQ(w->format, WeightFormat::BF16) << name;
    EXPECT_EQ(0, std::memcmp(w->data, reference[i].second->data, n * 2)) << name;
  }
  EXPECT_GT(routers, 0);
  for (size_t l = 0; l < rounded->layers.size(); ++l) {
    const MlaWeights& a = rounded->layers[l].self_attn;
    EXPECT_EQ(a.kv_b_proj_values.data, a.kv_b_proj.data) << "layer " << l << ": the alias is kept";
    const WeightMatrix& keys = f32->layers[l].self_attn.kv_b_proj_keys_transposed;  // derived, f32
    ASSERT_EQ(a.kv_b_proj_keys_transposed.format, WeightFormat::BF16);
    const auto* bits = static_cast<const uint16_t*>(a.kv_b_proj_keys_transposed.data);
    const auto* values = static_cast<const float*>(keys.data);
    for (int64_t j = 0; j < keys.rows * keys.cols; ++j) ASSERT_EQ(bits[j], f32_to_bf16(values[j])) << "layer " << l;
  }
  // Every matrix named, plus each layer's transposed key half (the value half is an alias).
  EXPECT_EQ(count, int64_t(names.size()) - routers + int64_t(rounded->layers.size()));
  // The model runs on them: close to the f32 logits, and not equal to them.
  const auto ids = tokens(24);
  const auto exact = full_pass(*f32, ids, 2, std::nullopt), approx = full_pass(*rounded, ids, 2, std::nullopt);
  const double error = testing::relative_error(approx, exact);
  EXPECT_GT(error, 1e-5);
  EXPECT_LT(error, 3e-2);
  EXPECT_EQ(rounded->round_to_bf16(), 0) << "nothing left to round";
}

TEST_F(ModelTest, TokensOutsideTheVocabularyAndOverfullCachesAreErrors) {
  const auto weights = ModelWeights::load((dir_ / "model").string());
  Model model(*weights, 1);
  LatentCache cache(weights->config, 2);
  std::vector<float> logits(size_t(3 * weights->config.vocab_size));
  const std::vector<int32_t> bad = {1, 101};
  EXPECT_THROW(model.forward(bad, cache, LogitsFor::AllTokens, logits.data()), Error);
  const std::vector<int32_t> long_prompt = {1, 2, 3};
  EXPECT_THROW(model.forward(long_prompt, cache, LogitsFor::AllTokens, logits.data()), Error);
}

// Rewrites the checkpoint with one tensor changed by `edit` (return false to drop it).
void rewrite_checkpoint(const fs::path& model_dir,
                        const std::function<bool(TensorToWrite&, std::vector<uint8_t>&)>& edit,
                        const std::vector<TensorToWrite>& extra = {}) {
  std::vector<std::vector<uint8_t>> storage;
  std::vector<TensorToWrite> tensors;
  {
    CheckpointReader reader(model_dir.string());
    storage.reserve(reader.tensors().size() + 1);
    for (const auto& [name, view] : reader.tensors()) {
      auto& bytes = storage.emplace_back(view.data, view.data + view.n_bytes);
      TensorToWrite tensor{name, view.dtype, view.shape, bytes};
      if (!edit(tensor, bytes)) continue;
      tensor.data = bytes;
      tensors.push_back(tensor);
    }
  }
  for (const auto& tensor : extra) tensors.push_back(tensor);
  write_file_atomically((model_dir / "model.safetensors").string(), serialize_safetensors(tensors));
}

std::string load_error(const fs::path& model_dir) {
  try {
    ModelWeights::load(model_dir.string());
  } catch (const Error& e) {
    return e.what();
  }
  return "loaded";
}

TEST_F(ModelTest, MissingTensorIsNamed) {
  const std::string victim = "model.layers.1.mlp.experts.3.up_proj.weight";
  rewrite_checkpoint(dir_ / "model", [&](TensorToWrite& t, std::vector<uint8_t>&) { return t.name != victim; });
  EXPECT_NE(load_error(dir_ / "model").find("missing tensor " + victim), std::string::npos);
}

TEST_F(ModelTest, MisShapedTensorIsNamedWithBothShapes) {
  const std::string victim = "model.layers.2.self_attn.kv_b_proj.weight";
  rewrite_checkpoint(dir_ / "model", [&](TensorToWrite& t, std::vector<uint8_t>& bytes) {
    if (t.name == victim) {
      t.shape = {t.shape[0] / 2, t.shape[1]};
      bytes.resize(bytes.size() / 2);
    }
    return true;
  });
  const std::string message = load_error(dir_ / "model");
  EXPECT_NE(message.find(victim), std::string::npos) << message;
  EXPECT_NE(message.find("expected shape [144, 32], found [72, 32]"), std::string::npos) << message;
}

TEST_F(ModelTest, UnknownTensorsAreListedAndMtpLayersSkipped) {
  const std::vector<float> values = {1, 2, 3, 4};
  const std::span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(values.data()), 16);
  rewrite_checkpoint(dir_ / "model", [](TensorToWrite&, std::vector<uint8_t>&) { return true; },
                     {{"model.layers.3.eh_proj.weight", DType::F32, {2, 2}, bytes},
                      {"model.layers.3.self_attn.kv_a_proj_with_mqa.weight", DType::F32, {4}, bytes},
                      {"model.extra_thing", DType::F32, {4}, bytes}});
  const auto weights = ModelWeights::load((dir_ / "model").string());
  EXPECT_EQ(weights->ignored_tensors, std::vector<std::string>{"model.extra_thing"});
}

// A config that names an MTP module its checkpoint lacks (many V3 conversions drop layer 61)
// loads without one; a module held only in part names the tensor it lacks.
TEST_F(ModelTest, MtpModulesLoadWhenHeldWhole) {
  std::string config = kSmallConfig;
  config.insert(config.rfind('}'), R"(, "num_nextn_predict_layers": 1)");
  std::ofstream(dir_ / "mtp_config.json") << config;
  write_random_checkpoint((dir_ / "mtp_config.json").string(), (dir_ / "mtp").string(), 11, DType::F32);
  const auto with = ModelWeights::load((dir_ / "mtp").string());
  EXPECT_EQ(with->config.num_nextn_predict_layers, 1);
  EXPECT_EQ(with->layers.size(), 4u);
  EXPECT_TRUE(with->ignored_tensors.empty());
  std::ofstream(dir_ / "model" / "config.json") << config;  // says 1, holds none
  const auto without = ModelWeights::load((dir_ / "model").string());
  EXPECT_EQ(without->config.num_nextn_predict_layers, 0);
  EXPECT_EQ(without->parameter_count(), with->parameter_count());
  const std::string victim = "model.layers.3.self_attn.o_proj.weight";
  rewrite_checkpoint(dir_ / "mtp", [&](TensorToWrite& t, std::vector<uint8_t>&) { return t.name != victim; });
  EXPECT_NE(load_error(dir_ / "mtp").find("missing tensor " + victim), std::string::npos);
}

TEST_F(ModelTest, TruncatedFileIsAnError) {
  const fs::path file = dir_ / "model" / "model.safetensors";
  fs::resize_file(file, fs::file_size(file) - 100);
  EXPECT_NE(load_error(dir_ / "model").find("truncated"), std::string::npos);
}

}  // namespace
}  // namespace deepmoe
