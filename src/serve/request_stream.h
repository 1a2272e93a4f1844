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

  // The engine's side.
  void push(EngineToken token);
  void finish(FinishReason reason, std::string error = {});
  void set_cached_tokens(int64_t n) { cached_tokens_ = n; }

 private:
  mutable std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<EngineToken> tokens_;
  FinishReason reason_ = FinishReason::None;
  std::string error_;
  std::atomic<bool> cancelled_{false};
  std::atomic<int64_t> cached_tokens_{0};
};

}  // namespace deepmoe
