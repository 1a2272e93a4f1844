#include "serve/request_stream.h"

#include <algorithm>

#include "kernels/ops.h"

namespace deepmoe {

EngineToken token_logprobs(const float* logits, int64_t vocab, int32_t token, int64_t top) {
  const double log_total = log_sum_exp(logits, vocab);
  EngineToken out;
  out.token = token;
  out.logprob = float(double(logits[token]) - log_total);
  if (top <= 0) return out;
  std::vector<int32_t> order(static_cast<size_t>(vocab));
  for (int64_t i = 0; i < vocab; ++i) order[size_t(i)] = int32_t(i);
  const int64_t k = std::min(top, vocab);
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
  for (int64_t i = 0; i < k; ++i)
    out.top.push_back({order[size_t(i)], float(double(logits[order[size_t(i)]]) - log_total)});
  return out;
}

std::vector<EngineToken> RequestStream::prompt_logprobs() const {
  std::lock_guard lock(mutex_);
  return prompt_logprobs_;
}

void RequestStream::set_prompt_logprobs(std::vector<EngineToken> logprobs) {
  std::lock_guard lock(mutex_);
  prompt_logprobs_ = std::move(logprobs);
}

RequestStream::Next RequestStream::next(EngineToken& out, std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  if (!ready_.wait_for(lock, timeout, [&] { return !tokens_.empty() || reason_ != FinishReason::None; }))
    return Next::Timeout;
  if (tokens_.empty()) return Next::End;
  out = std::move(tokens_.front());
  tokens_.pop_front();
  return Next::Token;
}

FinishReason RequestStream::finish_reason() const {
  std::lock_guard lock(mutex_);
  return reason_;
}

std::string RequestStream::error() const {
  std::lock_guard lock(mutex_);
  return error_;
}

std::pair<std::chrono::steady_clock::time_point, std::chrono::steady_clock::time_point> RequestStream::token_times()
    const {
  std::lock_guard lock(mutex_);
  return {first_token_at_, last_token_at_};
}

void RequestStream::push(EngineToken token) {
  const auto now = std::chrono::steady_clock::now();
  {
    std::lock_guard lock(mutex_);
    if (tokens_pushed_++ == 0) first_token_at_ = now;
    last_token_at_ = now;
    tokens_.push_back(std::move(token));
  }
  ready_.notify_all();
}

void RequestStream::finish(FinishReason reason, std::string error) {
  {
    std::lock_guard lock(mutex_);
    if (reason_ != FinishReason::None) return;
    reason_ = reason;
    error_ = std::move(error);
  }
  ready_.notify_all();
}

}  // namespace deepmoe
