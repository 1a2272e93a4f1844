// Continuous batching over one Model: every step runs one forward_batch that mixes the decoding
// sequences (one token each) with chunks of prompts (chunked prefill), under max_batch sequences
// and max_batch_tokens tokens. Requests join and leave between steps, first come first served.
// Latents live in a paged cache (block_pool.h, paged_latent_cache.h); full blocks are published
// to the prefix cache, and a new request starts from the longest cached prefix of its tokens.
// When blocks run out, the newest running sequence is preempted: its blocks are released and it
// goes back to the head of the queue, to be recomputed (most of it from the prefix cache) and
// finished later. One thread (the step loop) owns the model, the pool and every sequence.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "infer/sampler.h"
#include "model/model.h"
#include "serve/block_pool.h"
#include "serve/paged_latent_cache.h"
#include "serve/request_stream.h"

namespace deepmoe {

struct EngineOptions {
  int64_t max_batch = 16;          // sequences per step
  int64_t max_batch_tokens = 256;  // tokens per step (decode tokens plus prompt chunks)
  int64_t block_tokens = 16;       // positions per cache block
  int64_t kv_blocks = 0;           // blocks in the cache
  int64_t context = 0;             // longest sequence, prompt plus output
  int64_t max_queue = 256;         // requests waiting for a slot before submit refuses
  // Ids never sampled nor reported among top logprobs: those the tokenizer cannot spell
  // (a vocab_size padded past the tokenizer's ids, holes in its vocabulary).
  std::vector<int32_t> never_sample;
  // Speculative decoding with the model's MTP module: drafts per sequence and step (0: off), and
  // the most decoding sequences a step speculates for (above it, plain steps: docs/benchmarks.md "Multi-token
  // prediction").
  int64_t speculative_tokens = 0;
  int64_t speculative_max_batch = 4;
  // The layers the latent cache holds: the main ones, and with speculation the MTP module's.
  int64_t cache_layers(const Config& config) const {
    return speculative_tokens > 0 ? config.layer_count() : config.num_hidden_layers;
  }
};

struct EngineRequest {
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  int64_t max_tokens = 16;           // 0: only the prompt (for its logprobs), nothing generated
  std::vector<int32_t> stop_tokens;  // end the sequence (finish_reason stop), not delivered
  bool deliver_stop_token = false;   // deliver the stop token too (GRPO trains on the EOS it sampled)
  int64_t top_logprobs = -1;         // -1: no logprobs; 0..: the chosen token's and this many more
  // -1: none. k >= 1: every prompt token from index k on scored given the tokens before it
  // (RequestStream::prompt_logprobs, with max(top_logprobs, 0) alternatives), from the raw logits
  // as log-likelihood evaluation needs them. Positions from k - 1 on are computed, not taken from
  // the prefix cache.
  int64_t prompt_logprobs_from = -1;
};

struct EngineStats {
  int64_t running = 0, waiting = 0;
  int64_t kv_blocks_used = 0, kv_blocks_free = 0, kv_blocks_cached = 0, kv_block_tokens = 0;
  int64_t prefix_queried_tokens = 0, prefix_hit_tokens = 0;  // at admissions
  int64_t preemptions = 0, steps = 0, tokens_computed = 0, generated_tokens = 0;
  // Speculative decoding: steps that verified drafts, drafts verified, drafts accepted.
  int64_t speculative_steps = 0, draft_tokens = 0, accepted_tokens = 0;
  std::vector<std::vector<int64_t>> expert_load;  // [layer][expert], tokens routed since start
};

class QueueFull : public std::runtime_error {
 public:
  QueueFull() : std::runtime_error("the request queue is full") {}
};

class Engine {
 public:
  Engine(Model& model, const EngineOptions& options);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  const EngineOptions& options() const { return options_; }
  // Queues a request; throws QueueFull when max_queue requests already wait, Error on a request
  // the engine cannot run (empty prompt, token outside the vocabulary, longer than the context).
  std::shared_ptr<RequestStream> submit(EngineRequest request);
  // Queues requests at once, in order: the step loop takes them all in, so the same requests on
  // the same weights are scheduled, batched and sampled the same way each time (GRPO's rollouts,
  // reproducible for --resume). Checks all of them before queueing any.
  std::vector<std::shared_ptr<RequestStream>> submit_all(std::vector<EngineRequest> requests);
  EngineStats stats() const;
  // Requests queued or running.
  int64_t in_flight() const;
  // Cancels everything queued or running (the next step finishes them as cancelled).
  void cancel_all();

 private:
  struct Sequence;
  void check(const EngineRequest& request) const;  // throws Error naming what the engine cannot run
  void loop();
  void step();
  void drop_cancelled();
  bool ensure_blocks(Sequence& sequence, int64_t positions, std::vector<Sequence*>& scheduled);
  void preempt(Sequence& sequence);
  void admit_prefix(Sequence& sequence);
  void publish_full_blocks(Sequence& sequence);
  void finish(Sequence& sequence, FinishReason reason, const std::string& error = {});
  void release_blocks(Sequence& sequence);
  // The next token from a sequence's logits row, with its log-probabilities when asked: work
  // of that sequence alone (any thread). deliver() records it and streams it (step loop only).
  EngineToken choose(Sequence& sequence, float* logits) const;
  // Scores the prompt tokens that a chunk's logits rows (one per position) predict.
  void score_prompt(Sequence& sequence, int64_t first_position, int64_t rows, const float* logits);
  void deliver(Sequence& sequence, EngineToken token);
  // Speculation: each speculating sequence's drafts (the MTP module's chain over its own states),
  // the tokens its verify rows keep, and the module's rows for the positions the step made final
  // (with the next step's first draft).
  void draft_chains(std::span<Sequence* const> speculating);
  std::vector<EngineToken> verify(Sequence& sequence, float* rows, int64_t& accepted);
  void extend_mtp(std::span<Sequence* const> scheduled, std::span<const BatchSequence> batch);

  Model& model_;
  EngineOptions options_;
  BlockPool blocks_;
  PagedLatentCache cache_;

  mutable std::mutex mutex_;  // guards incoming_, stop_, and the stats copy
  std::condition_variable wake_;
  std::deque<std::unique_ptr<Sequence>> incoming_;
  bool stop_ = false;
  bool cancel_everything_ = false;
  EngineStats stats_;
  std::atomic<int64_t> in_flight_{0};
  uint64_t next_arrival_ = 0;

  // Step loop only.
  std::deque<std::unique_ptr<Sequence>> waiting_;
  std::vector<std::unique_ptr<Sequence>> running_;
  std::vector<float> logits_;
  std::vector<float> hidden_, states_, draft_logits_;  // speculation: the step's normed rows, the module's
  std::thread thread_;
};

}  // namespace deepmoe
