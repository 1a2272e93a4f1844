#include "serve/request_stream.h"

namespace deepmoe {

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

void RequestStream::push(EngineToken token) {
  {
    std::lock_guard lock(mutex_);
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
