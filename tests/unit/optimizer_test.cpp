// Optimizer arithmetic on numbers worked by hand from the formulas (PyTorch's AdamW; Lion from
// its paper), schedules and clipping. Whole-model agreement with torch is
// tests/reference/test_optimizer_vs_reference.py.
#include <gtest/gtest.h>

#include <cmath>

#include "train/optimizer.h"

namespace deepmoe::train {
namespace {

ThreadPool pool_(2);

Config tiny_config() {
  Config c;
  c.vocab_size = 3;
  c.hidden_size = 2;
  c.intermediate_size = 2;
  c.num_hidden_layers = 0;
  c.tie_word_embeddings = true;
  return c;
}

TEST(OptimizerTest, LionTwoStepsByHand) {
  Parameters p(tiny_config());  // embed [3, 2] + norm [2]: 8 values
  ASSERT_EQ(p.values().size(), 8u);
  for (size_t i = 0; i < 8; ++i) p.values()[i] = 1.0f;
  OptimizerOptions o;
  o.kind = OptimizerKind::Lion;
  o.beta1 = 0.9;
  o.beta2 = 0.99;
  o.weight_decay = 0.5;
  Optimizer opt(p, o);
  const float g1[8] = {2, -3, 0, 1, 1, 1, 1, 1}, g2[8] = {-0.1f, -3, 0, 1, 1, 1, 1, 1};
  std::copy(g1, g1 + 8, p.grads().begin());
  opt.step(pool_, p, 0.1);
  // w = 1·(1 − 0.05) − 0.1·sign(0.1·g): 0.85, 1.05, 0.95 (sign 0)
  EXPECT_FLOAT_EQ(p.values()[0], 0.85f);
  EXPECT_FLOAT_EQ(p.values()[1], 1.05f);
  EXPECT_FLOAT_EQ(p.values()[2], 0.95f);
  std::copy(g2, g2 + 8, p.grads().begin());
  opt.step(pool_, p, 0.1);
  // m after step 1 = 0.01·g1 = 0.02; blend = 0.9·0.02 + 0.1·(−0.1) = 0.008 > 0: w = 0.85·0.95 − 0.1
  EXPECT_NEAR(p.values()[0], 0.85f * 0.95f - 0.1f, 1e-6);
  EXPECT_NEAR(p.values()[1], 1.05f * 0.95f + 0.1f, 1e-6);
}

TEST(OptimizerTest, AdamWFirstStepIsSignedLearningRate) {
  Parameters p(tiny_config());
  for (size_t i = 0; i < 8; ++i) p.values()[i] = 2.0f;
  p.grads()[0] = 0.5f;
  p.grads()[1] = -4.0f;
  OptimizerOptions o;
  o.weight_decay = 0.1;
  Optimizer opt(p, o);
  opt.step(pool_, p, 0.01);
  // Bias-corrected first step: m̂ = g, v̂ = g², so the update is lr·g/(|g| + eps) after decay.
  EXPECT_NEAR(p.values()[0], 2.0 * (1 - 0.001) - 0.01 * 0.5 / (0.5 + 1e-8), 1e-6);
  EXPECT_NEAR(p.values()[1], 2.0 * (1 - 0.001) + 0.01 * 4.0 / (4.0 + 1e-8), 1e-6);
  EXPECT_NEAR(p.values()[2], 2.0 * (1 - 0.001), 1e-6);  // zero gradient: decay only
}

TEST(OptimizerTest, SchedulesAndClipping) {
  ScheduleOptions s;
  s.kind = Schedule::Cosine;
  s.lr = 1.0;
  s.min_lr = 0.1;
  s.warmup = 4;
  s.total_steps = 14;
  EXPECT_DOUBLE_EQ(learning_rate(s, 0), 0.25);
  EXPECT_DOUBLE_EQ(learning_rate(s, 3), 1.0);
  EXPECT_NEAR(learning_rate(s, 9), 0.55, 1e-12);  // halfway through the decay
  EXPECT_NEAR(learning_rate(s, 14), 0.1, 1e-12);
  s.kind = Schedule::Wsd;
  EXPECT_DOUBLE_EQ(learning_rate(s, 8), 1.0);
  EXPECT_NEAR(learning_rate(s, 13), 0.1, 1e-12);

  Parameters p(tiny_config());
  p.grads()[0] = 3.0f;
  p.grads()[7] = 4.0f;
  EXPECT_NEAR(clip_gradients(pool_, p, 1.0), 5.0, 1e-9);
  EXPECT_NEAR(p.grads()[0], 3.0 / (5.0 + 1e-6), 1e-6);
  EXPECT_NEAR(clip_gradients(pool_, p, 0.0), 1.0, 1e-5);  // 0: measure only
}

// ZeRO-1: optimizers over the shards of the buffer, each fed its shard's gradients, end where one
// optimizer over the whole buffer ends, bit for bit; so do the sharded norm and clipping.
TEST(OptimizerTest, ShardedStepsMatchTheWholeBufferBitForBit) {
  Config c = tiny_config();
  c.vocab_size = 50;  // 50 x 2 embedding + 2 norm = 102 values: shards of 48, 48, 6 elements
  for (const OptimizerKind kind : {OptimizerKind::AdamW, OptimizerKind::Lion}) {
    Parameters whole(c), sharded(c);
    for (size_t i = 0; i < whole.values().size(); ++i) {
      whole.values()[i] = sharded.values()[i] = 0.01f * float(i % 17) - 0.05f;
      whole.grads()[i] = sharded.grads()[i] = 0.3f * float(i % 7) - 0.9f;
    }
    OptimizerOptions o;
    o.kind = kind;
    o.weight_decay = 0.1;
    Optimizer one(whole, o);
    const dist::ShardLayout layout(whole.values().size(), 3);
    std::vector<Optimizer> parts;
    for (int r = 0; r < 3; ++r) parts.emplace_back(sharded, o, layout.shard(r));

    const double norm = clip_gradients(pool_, whole, 2.0);
    double squares = 0;
    for (int r = 0; r < 3; ++r) {
      const dist::Shard s = layout.shard(r);
      squares +=
          squared_gradient_norm(pool_, sharded, s, std::span<const float>(sharded.grads()).subspan(s.begin, s.size()));
    }
    EXPECT_NEAR(std::sqrt(squares), norm, 1e-9 * norm);
    for (int step = 0; step < 3; ++step) {
      if (step > 0) one.step(pool_, whole, 0.01);
      for (int r = 0; r < 3; ++r) {
        const dist::Shard s = layout.shard(r);
        const std::span<float> g = std::span<float>(sharded.grads()).subspan(s.begin, s.size());
        if (step == 0) scale_gradients(pool_, sharded, s, g, clip_coefficient(norm, 2.0));
        else parts[size_t(r)].step(pool_, sharded, g, 0.01);
      }
    }
    EXPECT_EQ(whole.grads(), sharded.grads());
    EXPECT_EQ(whole.values(), sharded.values());
    // A shard's state taken from a whole optimizer's (a resume at another world size).
    Optimizer again(sharded, o, layout.shard(1));
    again.copy_shard_from(one);
    EXPECT_EQ(again.first_moment(), parts[1].first_moment());
    EXPECT_EQ(again.second_moment(), parts[1].second_moment());
    EXPECT_EQ(again.steps_taken(), 2);
  }
}

}  // namespace
}  // namespace deepmoe::train
