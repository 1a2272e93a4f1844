// What one request's HTTP handler and the engine share: tokens flow from the engine's step loop
// to the handler's thread; a cancel flows back (the client went away, or a stop string matched).
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace deepmoe {

struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0.0f;
};

struct EngineToken {
  int32_t token = 0;
  float logprob = 0.0f;           // of the chosen token under the model's distribution
  std::vector<TokenLogprob> top;  // the most likely tokens, when asked for
};

// The model's log-softmax of one logits row: `token`'s log-probability and the `top` most likely
// ids (ties to the lower id, as torch's argmax and topk), from the raw logits.
EngineToken token_logprobs(const float* logits, int64_t vocab, int32_t token, int64_t top);

enum class FinishReason { None, Stop, Length, Cancelled, Error };

class RequestStream {
 public:
  enum class Next { Token, End, Timeout };
  // Waits up to `timeout` for the next token; End once the request finished and every token was taken.
  Next next(EngineToken& out, std::chrono::milliseconds timeout);
  // Asks the engine to drop the request at its next step (idempotent).
  void cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }
  FinishReason finish_reason() const;
  std::string error() const;
  // Prompt tokens served from the prefix cache at admission (the last admission, after a preemption).
  int64_t cached_tokens() const { return cached_tokens_; }
  // Speculative decoding: drafts verified for this request, and how many were accepted.
  int64_t drafted_tokens() const { return drafted_; }
  int64_t accepted_tokens() const { return accepted_; }
  // The prompt's tokens from EngineRequest::prompt_logprobs_from on, each scored given the ones
  // before it; complete before the first generated token (or the end) is delivered.
  std::vector<EngineToken> prompt_logprobs() const;
  // When the engine produced the first and the latest token (the epoch before any): timing taken
  // where the tokens are made, not where a consumer happens to look.
  std::pair<std::chrono::steady_clock::time_point, std::chrono::steady_clock::time_point> token_times() const;

  // The engine's side.
  void push(EngineToken token);
  void finish(FinishReason reason, std::string error = {});
  void set_cached_tokens(int64_t n) { cached_tokens_ = n; }
  void add_speculation(int64_t drafted, int64_t accepted) {
    drafted_ += drafted;
    accepted_ += accepted;
  }
  void set_prompt_logprobs(std::vector<EngineToken> logprobs);

 private:
  mutable std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<EngineToken> tokens_;
  std::vector<EngineToken> prompt_logprobs_;
  std::chrono::steady_clock::time_point first_token_at_, last_token_at_;
  int64_t tokens_pushed_ = 0;
  FinishReason reason_ = FinishReason::None;
  std::string error_;
  std::atomic<bool> cancelled_{false};
  std::atomic<int64_t> cached_tokens_{0};
  std::atomic<int64_t> drafted_{0}, accepted_{0};
};

}  // namespace deepmoe
