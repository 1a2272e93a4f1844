// One OpenAI request in flight: its n choices as engine requests, each choice's text (whole
// characters, stop strings held back and cut), its tokens' logprobs, and the request's timing
// for /metrics. The HTTP handler polls it and hands what it returns to openai_api's builders.
#pragma once
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "serve/engine.h"
#include "serve/metrics.h"
#include "serve/openai_api.h"

namespace deepmoe {

class CompletionRun {
 public:
  // Submits every prompt's n choices (seed + index each when seeded). Throws QueueFull or Error, having
  // cancelled whatever it had submitted.
  CompletionRun(Engine& engine, const Tokenizer& tokenizer, const CompletionRequest& request, Metrics& metrics);
  // Cancels choices still running (the client went away).
  ~CompletionRun();
  CompletionRun(const CompletionRun&) = delete;
  CompletionRun& operator=(const CompletionRun&) = delete;

  // Waits up to `timeout` for progress and appends it; false when nothing happened.
  bool poll(std::chrono::milliseconds timeout, std::vector<ChoiceDelta>& deltas);
  bool done() const;
  void cancel();

  size_t choices() const { return choices_.size(); }
  // When choice `index`'s first and latest tokens were produced (RequestStream::token_times).
  std::pair<std::chrono::steady_clock::time_point, std::chrono::steady_clock::time_point> token_times(
      size_t index) const {
    return choices_[index].stream->token_times();
  }
  Usage usage() const;
  // The engine's error, when a choice failed in the engine (empty otherwise).
  const std::string& error() const { return error_; }

 private:
  struct Choice {
    std::shared_ptr<RequestStream> stream;
    std::unique_ptr<ChoiceText> text;
    bool finished = false;
    std::vector<int32_t> echo;  // the prompt, until it has led the choice's text (echo)
    std::chrono::steady_clock::time_point last_token;
  };
  bool take(size_t index, std::chrono::milliseconds timeout, std::vector<ChoiceDelta>& deltas);

  Metrics& metrics_;
  std::vector<Choice> choices_;
  int64_t prompt_tokens_ = 0, completion_tokens_ = 0;
  std::string error_;
  std::chrono::steady_clock::time_point start_;
  bool first_token_seen_ = false, reported_ = false;
};

}  // namespace deepmoe
