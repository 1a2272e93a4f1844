// The server's engine: the paged batched forward against the one-sequence forward (itself
// checked against PyTorch float64), batch invariance, and the scheduler's promises: greedy
// output equal to plain generation, preemption that loses nothing, prefix-cache reuse, and
// cancellation that frees the cache.
#include "serve/engine.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "infer/generator.h"
#include "kernels/matmul.h"
#include "model/random_init.h"
#include "mtp_test_model.h"
#include "serve/block_pool.h"
#include "test_util.h"

namespace deepmoe {
namespace {

namespace fs = std::filesystem;

constexpr const char* kConfig = R"({
  "model_type": "deepseek_v3", "vocab_size": 211, "hidden_size": 64, "intermediate_size": 96,
  "moe_intermediate_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4, "q_lora_rank": 24,
  "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 20,
  "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 2, "first_k_dense_replace": 1,
  "n_group": 4, "topk_group": 2, "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": true,
  "max_position_embeddings": 512})";

class ServeEngine : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("deepmoe_serve_engine_test_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    std::ofstream((dir_ / "config.json").string()) << kConfig;
    write_random_checkpoint((dir_ / "config.json").string(), (dir_ / "model").string(), 3, DType::F32);
    weights_ = ModelWeights::load((dir_ / "model").string()).release();
  }
  static void TearDownTestSuite() {
    delete weights_;
    fs::remove_all(dir_);
  }
  // As the server runs the model: absorbed attention, batch-invariant kernels.
  static ModelOptions serving(int threads) {
    ModelOptions o;
    o.threads = threads;
    o.attention_mode = AttentionMode::Absorbed;
    o.context.batch_invariant = true;
    return o;
  }

  static std::vector<int32_t> prompt(size_t n, int32_t salt) {
    std::vector<int32_t> ids(n);
    for (size_t i = 0; i < n; ++i) ids[i] = int32_t((int64_t(i) * 37 + salt * 11 + 5) % 211);
    return ids;
  }
  static EngineOptions options(int64_t kv_blocks = 256) {
    EngineOptions o;
    o.max_batch = 16;
    o.max_batch_tokens = 40;
    o.block_tokens = 16;
    o.kv_blocks = kv_blocks;
    o.context = 160;
    return o;
  }
  // Every token of a finished stream.
  static std::vector<int32_t> collect(RequestStream& stream) {
    std::vector<int32_t> tokens;
    EngineToken token;
    while (stream.next(token, std::chrono::seconds(60)) == RequestStream::Next::Token) tokens.push_back(token.token);
    return tokens;
  }
  static EngineRequest greedy(std::vector<int32_t> ids, int64_t max_tokens) {
    EngineRequest r;
    r.prompt = std::move(ids);
    r.max_tokens = max_tokens;
    return r;
  }

  static inline fs::path dir_;
  static inline ModelWeights* weights_ = nullptr;
};

TEST_F(ServeEngine, PagedBatchedForwardMatchesOneSequenceAtATime) {
  const Config& c = weights_->config;
  Model model(*weights_, 2);
  // Three sequences with different histories, then one batch: a prompt chunk, a decode step, a
  // longer chunk. Their blocks interleave in the paged cache.
  const std::vector<int32_t> a = prompt(30, 1), b = prompt(20, 2), d = prompt(45, 3);
  const std::vector<int32_t>* all[3] = {&a, &b, &d};
  const int64_t history[3] = {10, 19, 5};
  const int64_t vocab = c.vocab_size;
  std::vector<float> expected(size_t(3 * vocab)), ignored(size_t(45 * vocab));
  for (size_t s = 0; s < 3; ++s) {
    LatentCache alone(c, 64);
    model.forward(std::span(*all[s]).first(size_t(history[s])), alone, LogitsFor::LastToken, ignored.data());
    model.forward(std::span(*all[s]).subspan(size_t(history[s])), alone, LogitsFor::LastToken,
                  expected.data() + s * vocab);
  }
  PagedLatentCache paged(c, c.num_hidden_layers, 12, 16);
  const std::vector<std::vector<int32_t>> tables = {{7, 2}, {0, 9}, {3, 11, 5}};
  const std::vector<int32_t>* table_pointers[3] = {&tables[0], &tables[1], &tables[2]};
  for (size_t s = 0; s < 3; ++s) {
    const BatchSequence history_chunk{std::span(*all[s]).first(size_t(history[s])), 0, LogitsFor::None};
    paged.bind(std::span(&history_chunk, 1), std::span(table_pointers + s, 1));
    model.forward_batch(std::span(&history_chunk, 1), paged, ignored.data());
  }
  std::vector<BatchSequence> batch;
  for (size_t s = 0; s < 3; ++s)
    batch.push_back({std::span(*all[s]).subspan(size_t(history[s])), history[s], LogitsFor::LastToken});
  std::vector<float> got(size_t(3 * vocab));
  paged.bind(batch, table_pointers);
  model.forward_batch(batch, paged, got.data());
  EXPECT_LT(testing::relative_error(got, expected), 1e-5);
  // The same logits row by row: a mix-up of sequences would fail here even if the norm passed.
  for (size_t s = 0; s < 3; ++s)
    EXPECT_LT(testing::relative_error(std::span(got).subspan(s * size_t(vocab), size_t(vocab)),
                                      std::span(expected).subspan(s * size_t(vocab), size_t(vocab))),
              1e-5);
}

TEST_F(ServeEngine, GreedyOutputEqualsPlainGenerationAloneOrAmongFifteenOthers) {
  Model reference_model(*weights_, serving(2));
  const std::vector<int32_t> ids = prompt(37, 9);
  std::vector<int32_t> expected;
  generate(reference_model, ids, 40, SamplingParams{}, [&](int32_t t) {
    expected.push_back(t);
    return true;
  });

  Model model(*weights_, serving(2));
  Engine engine(model, options());
  EXPECT_EQ(collect(*engine.submit(greedy(ids, 40))), expected);

  // Among 15 others of other lengths, arriving first, so its prompt is split into other chunks.
  std::vector<std::shared_ptr<RequestStream>> others;
  for (int i = 0; i < 15; ++i) {
    EngineRequest r = greedy(prompt(size_t(5 + 7 * i % 50), 20 + i), 30 + i);
    if (i % 2) {
      r.sampling.temperature = 0.8f;
      r.sampling.seed = uint64_t(i);
    }
    others.push_back(engine.submit(std::move(r)));
  }
  const auto crowded = engine.submit(greedy(ids, 40));
  EXPECT_EQ(collect(*crowded), expected);
  for (auto& other : others) collect(*other);
  EXPECT_GT(engine.stats().steps, 40);
}

TEST_F(ServeEngine, PreemptedSequencesFinishWithTheSameTokens) {
  // Alone, with plenty of blocks.
  std::vector<std::vector<int32_t>> expected;
  {
    Model model(*weights_, serving(2));
    Engine engine(model, options());
    for (int i = 0; i < 6; ++i) expected.push_back(collect(*engine.submit(greedy(prompt(20, 40 + i), 100))));
  }
  // Six at once in a cache that holds one full-context sequence and one block more.
  Model model(*weights_, serving(2));
  Engine engine(model, options(11));
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (int i = 0; i < 6; ++i) streams.push_back(engine.submit(greedy(prompt(20, 40 + i), 100)));
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(collect(*streams[size_t(i)]), expected[size_t(i)]) << "request " << i;
    EXPECT_EQ(streams[size_t(i)]->finish_reason(), FinishReason::Length);
  }
  EXPECT_GT(engine.stats().preemptions, 0);
}

// Speculation (the MTP module drafting 3 a step) changes no greedy token: alone, among others
// beyond --speculative-max-batch (plain steps while they run), preempted, and stopped mid-drafts.
TEST_F(ServeEngine, SpeculativeDecodingGivesTheSameTokens) {
  std::string config = kConfig;
  config.insert(config.rfind('}'), R"(, "num_nextn_predict_layers": 1)");
  const auto weights = testing::agreeing_mtp_model(dir_ / "mtp", config, 4);
  std::vector<std::vector<int32_t>> expected;
  {
    Model model(*weights, serving(2));
    Engine engine(model, options());
    for (int i = 0; i < 6; ++i) expected.push_back(collect(*engine.submit(greedy(prompt(20, 40 + i), 60))));
  }
  EngineOptions speculative = options();
  speculative.speculative_tokens = 3;
  speculative.speculative_max_batch = 2;
  for (const int64_t kv_blocks : {int64_t(256), int64_t(11)}) {  // 11: one full context and a block more
    speculative.kv_blocks = kv_blocks;
    Model model(*weights, serving(2));
    Engine engine(model, speculative);
    EXPECT_EQ(collect(*engine.submit(greedy(prompt(20, 40), 60))), expected[0]);
    std::vector<std::shared_ptr<RequestStream>> streams;
    for (int i = 0; i < 6; ++i) streams.push_back(engine.submit(greedy(prompt(20, 40 + i), 60)));
    for (int i = 0; i < 6; ++i) EXPECT_EQ(collect(*streams[size_t(i)]), expected[size_t(i)]) << "request " << i;
    // A stop token the drafts run past: the reply ends before it, as without speculation.
    EngineRequest stopped = greedy(prompt(20, 41), 60);
    stopped.stop_tokens = {expected[1][25]};
    const auto stop_at = std::find(expected[1].begin(), expected[1].end(), expected[1][25]);
    const auto stream = engine.submit(stopped);
    EXPECT_EQ(collect(*stream), std::vector<int32_t>(expected[1].begin(), stop_at));
    EXPECT_EQ(stream->finish_reason(), FinishReason::Stop);
    const EngineStats stats = engine.stats();
    EXPECT_GT(stats.accepted_tokens, stats.draft_tokens / 4) << kv_blocks << " blocks";
    EXPECT_LT(stats.accepted_tokens, stats.draft_tokens);
    EXPECT_GT(stats.speculative_steps, 0);
    EXPECT_LT(stats.speculative_steps, stats.steps);
    if (kv_blocks == 11) {
      EXPECT_GT(stats.preemptions, 0);
    }
  }
  EngineOptions no_module = options();
  no_module.speculative_tokens = 2;
  Model plain(*weights_, serving(1));
  EXPECT_THROW(Engine(plain, no_module), Error);
}

TEST_F(ServeEngine, RepeatedPromptReusesCachedBlocks) {
  Model model(*weights_, serving(2));
  Engine engine(model, options());
  const std::vector<int32_t> ids = prompt(50, 7);
  const auto first = engine.submit(greedy(ids, 8));
  const std::vector<int32_t> first_tokens = collect(*first);
  EXPECT_EQ(first->cached_tokens(), 0);
  const auto second = engine.submit(greedy(ids, 8));
  EXPECT_EQ(collect(*second), first_tokens);
  EXPECT_EQ(second->cached_tokens(), 48);  // three whole blocks; the last token is always computed
  // A prompt that shares only the first block.
  std::vector<int32_t> other = ids;
  other[20] = (other[20] + 1) % 211;
  const auto third = engine.submit(greedy(other, 4));
  collect(*third);
  EXPECT_EQ(third->cached_tokens(), 16);
  EXPECT_EQ(engine.stats().prefix_hit_tokens, 64);
}

TEST_F(ServeEngine, CancelledRequestFreesItsBlocks) {
  Model model(*weights_, serving(2));
  EngineOptions long_context = options();
  long_context.context = 500;  // 460 steps to go when the cancel arrives after the first token
  Engine engine(model, long_context);
  const auto stream = engine.submit(greedy(prompt(40, 3), 460));
  EngineToken token;
  ASSERT_EQ(stream->next(token, std::chrono::seconds(60)), RequestStream::Next::Token);
  stream->cancel();
  int64_t received = 1;
  while (stream->next(token, std::chrono::seconds(60)) == RequestStream::Next::Token) ++received;
  EXPECT_EQ(stream->finish_reason(), FinishReason::Cancelled);
  EXPECT_LT(received, 460);
  for (int i = 0; i < 100 && engine.stats().kv_blocks_used != 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(engine.stats().kv_blocks_used, 0);
  EXPECT_EQ(engine.in_flight(), 0);
}

TEST_F(ServeEngine, RefusesWhatItCannotRun) {
  Model model(*weights_, serving(1));
  EngineOptions small = options();
  small.max_queue = 0;
  small.max_batch = 1;
  Engine engine(model, small);
  EXPECT_THROW(engine.submit(greedy({}, 4)), Error);
  EXPECT_THROW(engine.submit(greedy({1, 211}, 4)), Error);
  EXPECT_THROW(engine.submit(greedy(prompt(160, 1), 4)), Error);
  const auto running = engine.submit(greedy(prompt(10, 1), 150));
  EXPECT_THROW(engine.submit(greedy(prompt(10, 2), 4)), QueueFull);
  running->cancel();
  EXPECT_THROW(Engine(model, options(9)), Error);  // 9 blocks of 16 < one sequence of 160
}

// Finding 18.3.2: a model whose vocab_size exceeds the tokenizer's ids sampled ids nobody can
// spell, and the streaming decoder threw. Ids in never_sample are neither sampled nor reported.
TEST_F(ServeEngine, NeverSamplesOrReportsExcludedIds) {
  Model model(*weights_, serving(2));
  EngineOptions o = options();
  for (int32_t id = 0; id < 211; ++id)
    if (id % 7 != 3) o.never_sample.push_back(id);  // 30 ids left
  Engine engine(model, o);
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (int i = 0; i < 4; ++i) {
    EngineRequest r = greedy(prompt(9, i), 60);
    r.sampling.temperature = i == 0 ? 0.0f : 2.0f;  // greedy, and hot enough to reach unlikely ids
    r.sampling.seed = uint64_t(i);
    r.top_logprobs = 5;
    streams.push_back(engine.submit(std::move(r)));
  }
  int tokens = 0;
  for (auto& stream : streams) {
    EngineToken token;
    while (stream->next(token, std::chrono::seconds(60)) == RequestStream::Next::Token) {
      ++tokens;
      EXPECT_EQ(token.token % 7, 3) << token.token;
      ASSERT_EQ(token.top.size(), 5u);
      for (const TokenLogprob& top : token.top) {
        EXPECT_EQ(top.token % 7, 3) << top.token;
        EXPECT_TRUE(std::isfinite(top.logprob));
      }
    }
  }
  EXPECT_EQ(tokens, 240);
  EngineOptions bad = options();
  bad.never_sample = {211};
  EXPECT_THROW(Engine(model, bad), Error);
}

TEST(BlockPool, FreeListPublishedBlocksAndLeastRecentlyUsedEviction) {
  BlockPool pool(3, 4);
  const std::vector<int32_t> t1 = {1, 2, 3, 4}, t2 = {5, 6, 7, 8};
  const uint64_t k1 = prefix_block_key(0, t1), k2 = prefix_block_key(k1, t2);
  EXPECT_NE(k1, prefix_block_key(0, t2));
  EXPECT_NE(k2, prefix_block_key(0, t2));  // the same tokens after another prefix are another key
  const int32_t a = pool.allocate(), b = pool.allocate();
  pool.publish(a, k1, t1);
  pool.publish(b, k2, t2);
  EXPECT_EQ(pool.lookup(k1, t1), a);   // held twice now
  EXPECT_EQ(pool.lookup(k1, t2), -1);  // same key, other tokens: never served
  pool.release(a);
  pool.release(a);
  pool.release(b);
  EXPECT_EQ(pool.available(), 3);
  EXPECT_EQ(pool.cached(), 2);
  EXPECT_EQ(pool.lookup(k2, t2), b);  // b is used again: a is now the least recently used
  pool.release(b);
  const int32_t c = pool.allocate();  // the never-used block first
  EXPECT_NE(c, a);
  EXPECT_NE(c, b);
  EXPECT_EQ(pool.allocate(), a);  // then the least recently used cached block, forgotten
  EXPECT_EQ(pool.lookup(k1, t1), -1);
  EXPECT_EQ(pool.lookup(k2, t2), b);
  EXPECT_EQ(pool.allocate(), -1);
  EXPECT_THROW({ BlockPool bad(0, 4); }, Error);
}

// Prompt log-probabilities (echo, log-likelihood evaluation) against log_softmax of one plain
// forward over the prompt, with the prompt's first blocks in the prefix cache (the positions that
// score must run anyway) and other requests in the same steps; max_tokens 0 generates nothing.
TEST_F(ServeEngine, PromptLogprobsEqualAPlainForwardEvenWithTheirPrefixCached) {
  const int64_t vocab = weights_->config.vocab_size;
  const std::vector<int32_t> ids = prompt(45, 4);
  Model reference_model(*weights_, serving(2));
  LatentCache cache(weights_->config, 64);
  std::vector<float> logits(ids.size() * size_t(vocab));
  reference_model.forward(ids, cache, LogitsFor::AllTokens, logits.data());

  Model model(*weights_, serving(2));
  Engine engine(model, options());
  collect(*engine.submit(greedy(ids, 1)));  // publishes the prompt's two full blocks
  for (const int64_t from : {1, 20, 44}) {
    EngineRequest r = greedy(ids, 0);
    r.prompt_logprobs_from = from;
    r.top_logprobs = 2;
    auto other = engine.submit(greedy(prompt(30, 5), 3));
    auto stream = engine.submit(r);
    EXPECT_TRUE(collect(*stream).empty());
    EXPECT_EQ(stream->finish_reason(), FinishReason::Length);
    collect(*other);
    const std::vector<EngineToken> got = stream->prompt_logprobs();
    ASSERT_EQ(got.size(), ids.size() - size_t(from));
    double worst = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      const size_t position = size_t(from) + i;  // scored by the row of the position before it
      const float* row = logits.data() + (position - 1) * size_t(vocab);
      double total = 0, highest = row[0];
      for (int64_t v = 0; v < vocab; ++v) highest = std::max(highest, double(row[v]));
      for (int64_t v = 0; v < vocab; ++v) total += std::exp(double(row[v]) - highest);
      const double expected = double(row[ids[position]]) - highest - std::log(total);
      EXPECT_EQ(got[i].token, ids[position]);
      worst = std::max(worst, std::abs(double(got[i].logprob) - expected) / std::abs(expected));
      ASSERT_EQ(got[i].top.size(), 2u);
      EXPECT_EQ(got[i].top[0].token, int32_t(std::max_element(row, row + vocab) - row));
      EXPECT_GE(got[i].top[0].logprob, got[i].top[1].logprob);
    }
    EXPECT_LT(worst, 1e-4) << "from " << from;
  }
}

}  // namespace
}  // namespace deepmoe
