#include "serve/completion_run.h"

#include <random>

namespace deepmoe {

CompletionRun::CompletionRun(Engine& engine, const Tokenizer& tokenizer, const CompletionRequest& request,
                             Metrics& metrics)
    : metrics_(metrics), start_(std::chrono::steady_clock::now()) {
  std::random_device entropy;
  for (size_t i = 0; i < request.prompts.size() * size_t(request.n); ++i) {
    const std::vector<int32_t>& prompt = request.prompts[i / size_t(request.n)];
    if (i % size_t(request.n) == 0) prompt_tokens_ += int64_t(prompt.size());  // a prompt counts once
    EngineRequest engine_request;
    engine_request.prompt = prompt;
    engine_request.sampling = request.sampling;
    engine_request.sampling.seed =
        request.seeded ? request.sampling.seed + uint64_t(i) : (uint64_t(entropy()) << 32) ^ uint64_t(entropy());
    engine_request.max_tokens = request.max_tokens;
    if (tokenizer.eos_id() && !request.ignore_eos) engine_request.stop_tokens.push_back(*tokenizer.eos_id());
    engine_request.top_logprobs = request.logprobs ? request.top_logprobs : -1;
    if (request.echo && request.logprobs) engine_request.prompt_logprobs_from = 1;
    Choice choice;
    try {
      choice.stream = engine.submit(std::move(engine_request));
    } catch (...) {
      cancel();
      throw;
    }
    choice.text = std::make_unique<ChoiceText>(tokenizer, request.stop);
    if (request.echo) choice.echo = prompt;
    choices_.push_back(std::move(choice));
  }
}

CompletionRun::~CompletionRun() { cancel(); }

void CompletionRun::cancel() {
  for (Choice& choice : choices_)
    if (!choice.finished) choice.stream->cancel();
}

bool CompletionRun::done() const {
  for (const Choice& choice : choices_)
    if (!choice.finished) return false;
  return true;
}

Usage CompletionRun::usage() const {
  Usage usage{prompt_tokens_, completion_tokens_, choices_.empty() ? 0 : choices_[0].stream->cached_tokens()};
  for (const Choice& choice : choices_) {
    usage.drafted_tokens += choice.stream->drafted_tokens();
    usage.accepted_tokens += choice.stream->accepted_tokens();
  }
  return usage;
}

bool CompletionRun::take(size_t index, std::chrono::milliseconds timeout, std::vector<ChoiceDelta>& deltas) {
  Choice& choice = choices_[index];
  EngineToken token;
  const auto next = choice.stream->next(token, timeout);
  if (next == RequestStream::Next::Timeout) return false;
  const auto now = std::chrono::steady_clock::now();
  if (!choice.echo.empty()) {  // the prompt leads the choice; its scores are in by now
    ChoiceDelta echo;
    echo.index = index;
    echo.prompt = std::move(choice.echo);
    choice.echo.clear();
    echo.prompt_logprobs = choice.stream->prompt_logprobs();
    deltas.push_back(std::move(echo));
  }
  ChoiceDelta delta;
  delta.index = index;
  if (next == RequestStream::Next::Token) {
    ++completion_tokens_;
    if (!first_token_seen_) {
      first_token_seen_ = true;
      metrics_.observe_time_to_first_token(std::chrono::duration<double>(now - start_).count());
    } else if (choice.last_token.time_since_epoch().count() != 0) {
      metrics_.observe_inter_token(std::chrono::duration<double>(now - choice.last_token).count());
    }
    choice.last_token = now;
    delta.text = choice.text->push(token.token);
    delta.token = std::move(token);
    if (choice.text->stopped()) {  // a stop string matched: the engine can drop the sequence
      choice.stream->cancel();
      choice.finished = true;
      delta.finished = FinishReason::Stop;
    }
  } else {
    FinishReason reason = choice.stream->finish_reason();
    if (reason == FinishReason::Error) error_ = choice.stream->error();
    delta.text = choice.text->finish();
    choice.finished = true;
    delta.finished = reason;
  }
  deltas.push_back(std::move(delta));
  if (done() && !reported_) {
    reported_ = true;
    metrics_.observe_request(std::chrono::duration<double>(now - start_).count(), prompt_tokens_, completion_tokens_);
  }
  return true;
}

bool CompletionRun::poll(std::chrono::milliseconds timeout, std::vector<ChoiceDelta>& deltas) {
  bool progress = false;
  for (size_t i = 0; i < choices_.size(); ++i)
    while (!choices_[i].finished && take(i, std::chrono::milliseconds(0), deltas)) progress = true;
  if (progress) return true;
  // Nothing ready: wait on the first unfinished choice (the others are polled again next time).
  const auto slice = choices_.size() > 1 ? std::min(timeout, std::chrono::milliseconds(20)) : timeout;
  for (size_t i = 0; i < choices_.size(); ++i)
    if (!choices_[i].finished) return take(i, slice, deltas);
  return false;
}

}  // namespace deepmoe
