#include "eval/engine_backend.h"

#include <algorithm>
#include <chrono>
#include <thread>

#include "core/error.h"
#include "serve/completion_run.h"
#include "serve/paged_latent_cache.h"

namespace deepmoe::eval {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_between(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

// Waits for a request the engine runs to its end; throws the engine's error.
void drain(RequestStream& stream) {
  EngineToken ignored;
  while (stream.next(ignored, std::chrono::hours(1)) != RequestStream::Next::End) {
  }
  if (stream.finish_reason() == FinishReason::Error) fail("the engine failed: {}", stream.error());
}

ContinuationScore sum_of(const std::vector<EngineToken>& scored) {
  ContinuationScore s;
  s.tokens = int64_t(scored.size());
  s.greedy = true;
  for (const EngineToken& t : scored) {
    s.logprob += double(t.logprob);
    s.greedy = s.greedy && !t.top.empty() && t.top[0].token == t.token;
  }
  return s;
}

}  // namespace

EngineBackend::EngineBackend(Model& model, const Tokenizer& tokenizer, const EngineBackendOptions& options)
    : model_(model), tokenizer_(tokenizer), options_(options) {
  EngineOptions e;
  e.max_batch = options_.max_batch;
  e.max_batch_tokens = options_.max_batch_tokens;
  e.context = options_.context;
  e.max_queue = int64_t(1) << 20;  // the backend bounds what it has in flight itself
  const int64_t one_sequence = (e.context + e.block_tokens - 1) / e.block_tokens;
  e.kv_blocks = std::max(
      one_sequence, PagedLatentCache::blocks_for_bytes(model.config(), e.cache_layers(model.config()), e.block_tokens,
                                                       int64_t(options_.kv_cache_mb * 1048576.0)));
  e.never_sample = unspellable_ids(tokenizer, model.config().vocab_size);
  engine_ = std::make_unique<Engine>(model, e);
}

int64_t EngineBackend::tokens_computed() const { return naive_tokens_ + engine_->stats().tokens_computed; }

std::vector<std::vector<ContinuationScore>> EngineBackend::loglikelihood(std::span<const EncodedQuestion> questions) {
  std::vector<std::vector<ContinuationScore>> scores(questions.size());
  if (options_.naive) {
    int64_t longest = 1;
    for (const auto& q : questions)
      for (const auto& c : q.continuations) longest = std::max(longest, int64_t(q.context.size() + c.size()));
    LatentCache cache(model_.config(), longest);
    for (size_t i = 0; i < questions.size(); ++i) {
      scores[i] = score_naively(model_, cache, questions[i].context, questions[i].continuations);
      for (const auto& c : questions[i].continuations)
        naive_tokens_ += int64_t(questions[i].context.size() + c.size()) - 1;
    }
    return scores;
  }
  // A request per choice: context + continuation, its continuation's tokens scored, nothing
  // generated. Waves of questions: each question's first choice runs (and caches) the context,
  // then the other choices start from its cached blocks.
  const auto submit = [&](const EncodedQuestion& q, size_t choice) {
    EngineRequest r;
    r.prompt = q.context;
    r.prompt.insert(r.prompt.end(), q.continuations[choice].begin(), q.continuations[choice].end());
    r.max_tokens = 0;
    r.top_logprobs = 1;
    r.prompt_logprobs_from = int64_t(q.context.size());
    return engine_->submit(std::move(r));
  };
  constexpr size_t kWave = 64;
  for (size_t begin = 0; begin < questions.size(); begin += kWave) {
    const size_t end = std::min(questions.size(), begin + kWave);
    for (const bool first_choices : {true, false}) {
      struct Pending {
        size_t question, choice;
        std::shared_ptr<RequestStream> stream;
      };
      std::vector<Pending> pending;
      for (size_t i = begin; i < end; ++i) {
        scores[i].resize(questions[i].continuations.size());
        for (size_t c = first_choices ? 0 : 1; c < (first_choices ? 1 : questions[i].continuations.size()); ++c)
          pending.push_back({i, c, submit(questions[i], c)});
      }
      for (const Pending& p : pending) {
        drain(*p.stream);
        scores[p.question][p.choice] = sum_of(p.stream->prompt_logprobs());
      }
    }
  }
  return scores;
}

std::vector<Generation> EngineBackend::generate(std::span<const GenerationRequest> requests) {
  std::vector<Generation> out(requests.size());
  struct Running {
    size_t index;
    std::unique_ptr<CompletionRun> run;
    Clock::time_point start;
  };
  std::vector<Running> running;
  size_t next = 0;
  // Twice the batch in flight: enough to keep every step full, few enough that the time to the
  // first token measures the engine rather than a queue of the whole task.
  const size_t window = size_t(options_.max_batch) * 2;
  std::vector<ChoiceDelta> deltas;
  while (next < requests.size() || !running.empty()) {
    while (next < requests.size() && running.size() < window) {
      const GenerationRequest& g = requests[next];
      CompletionRequest c;
      const std::vector<int32_t> prompt = tokenizer_.encode(g.prompt, true);
      if (int64_t(prompt.size()) >= options_.context)
        fail("a prompt of {} tokens leaves no room in the context of {}", prompt.size(), options_.context);
      c.prompts = {prompt};
      c.max_tokens = std::min(g.max_tokens, options_.context - int64_t(prompt.size()));
      c.sampling = g.sampling;
      c.seeded = true;
      c.stop = g.stop;
      c.ignore_eos = g.ignore_eos;
      out[next].prompt_tokens = int64_t(prompt.size());
      running.push_back({next, std::make_unique<CompletionRun>(*engine_, tokenizer_, c, metrics_), Clock::now()});
      ++next;
    }
    bool progress = false;
    for (Running& r : running) {
      deltas.clear();
      if (!r.run->poll(std::chrono::milliseconds(0), deltas)) continue;
      progress = true;
      for (const ChoiceDelta& d : deltas) out[r.index].text += d.text;
      if (r.run->done()) {
        if (!r.run->error().empty()) fail("the engine failed: {}", r.run->error());
        const auto [first, last] = r.run->token_times(0);
        Generation& g = out[r.index];
        g.tokens = r.run->usage().completion_tokens;
        g.seconds = seconds_between(r.start, g.tokens > 0 ? last : Clock::now());
        g.first_token_seconds = g.tokens > 0 ? seconds_between(r.start, first) : g.seconds;
      }
    }
    std::erase_if(running, [](const Running& r) { return r.run->done(); });
    if (!progress) std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  return out;
}

}  // namespace deepmoe::eval
