#include "serve/engine.h"

#include <algorithm>
#include <limits>

#include "core/error.h"
#include "infer/speculative.h"
#include "kernels/ops.h"

namespace deepmoe {

struct Engine::Sequence {
  std::shared_ptr<RequestStream> stream;
  EngineRequest request;
  std::vector<int32_t> tokens;  // prompt, then every generated token
  int64_t computed = 0;         // positions whose latents are in the cache
  std::vector<int32_t> blocks;  // block table
  std::vector<uint64_t> keys;   // prefix keys of the full blocks, published
  int64_t generated = 0;
  Sampler sampler;
  uint64_t arrival = 0;
  int64_t chunk = 0;  // tokens run this step
  bool done = false;
  int64_t prompt_size = 0;
  std::vector<EngineToken> prompt_logprobs;  // [prompt_logprobs_from, prompt_size), by index
  // Speculation: the MTP module's rows hold slots [0, mtp_computed) (slot p: h_p with token p + 1);
  // draft is its argmax at the last slot (-1: none yet) and draft_state its output there. drafts:
  // this step's, verified after the pending token.
  int64_t mtp_computed = 0;
  int32_t draft = -1;
  std::vector<float> draft_state;
  std::vector<int32_t> drafts;

  Sequence(EngineRequest r, uint64_t order)
      : stream(std::make_shared<RequestStream>()), request(std::move(r)), sampler(request.sampling), arrival(order) {
    tokens = std::move(request.prompt);
    prompt_size = int64_t(tokens.size());
    if (request.prompt_logprobs_from > 0)
      prompt_logprobs.resize(size_t(std::max<int64_t>(prompt_size - request.prompt_logprobs_from, 0)));
  }
  int64_t pending() const { return int64_t(tokens.size()) - computed; }
  // Positions whose logits score prompt tokens: [prompt_logprobs_from - 1, prompt_size - 1).
  bool scores_prompt() const { return request.prompt_logprobs_from > 0 && computed < prompt_size - 1; }
};

Engine::Engine(Model& model, const EngineOptions& options)
    : model_(model),
      options_(options),
      blocks_(options.kv_blocks, options.block_tokens),
      cache_(model.config(), options.cache_layers(model.config()), options.kv_blocks, options.block_tokens) {
  if (options_.speculative_tokens < 0 || options_.speculative_tokens > 16)
    fail("--speculative: K must be in [1, 16], found {}", options_.speculative_tokens);
  if (options_.speculative_tokens > 0 && model.config().num_nextn_predict_layers == 0)
    fail(
        "--speculative mtp:K needs a model with a multi-token-prediction module (num_nextn_predict_layers > 0 and "
        "its tensors); this one has none");
  if (options_.max_batch < 1) fail("--max-batch must be >= 1, found {}", options_.max_batch);
  if (options_.max_batch_tokens < 1) fail("--max-batch-tokens must be >= 1, found {}", options_.max_batch_tokens);
  if (options_.context < 2) fail("--ctx must be >= 2, found {}", options_.context);
  const int64_t vocab = model.config().vocab_size;
  for (const int32_t id : options_.never_sample)
    if (id < 0 || id >= vocab) fail("never_sample id {} is outside the vocabulary [0, {})", id, vocab);
  if (int64_t(options_.never_sample.size()) >= vocab) fail("every token id is excluded from sampling");
  // One sequence of the full context must fit on its own, or it could be preempted forever.
  const int64_t needed = (options_.context + options_.block_tokens - 1) / options_.block_tokens;
  if (options_.kv_blocks < needed)
    fail(
        "the KV cache holds {} tokens ({} blocks of {}), fewer than one sequence of --ctx {}; raise --kv-cache-mb "
        "or lower --ctx",
        options_.kv_blocks * options_.block_tokens, options_.kv_blocks, options_.block_tokens, options_.context);
  stats_.kv_blocks_free = options_.kv_blocks;
  stats_.kv_block_tokens = options_.block_tokens;
  thread_ = std::thread([this] { loop(); });
}

Engine::~Engine() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void Engine::check(const EngineRequest& request) const {
  const int64_t vocab = model_.config().vocab_size;
  if (request.prompt.empty()) fail("the prompt is empty");
  for (int32_t token : request.prompt)
    if (token < 0 || token >= vocab) fail("token id {} is outside the vocabulary [0, {})", token, vocab);
  if (int64_t(request.prompt.size()) >= options_.context)
    fail("the prompt has {} tokens; the context holds {}", request.prompt.size(), options_.context);
  if (request.max_tokens < 0) fail("max_tokens must be >= 0, found {}", request.max_tokens);
  if (request.prompt_logprobs_from > int64_t(request.prompt.size()))
    fail("prompt_logprobs_from {} is past the prompt's {} tokens", request.prompt_logprobs_from, request.prompt.size());
}

std::shared_ptr<RequestStream> Engine::submit(EngineRequest request) {
  std::vector<EngineRequest> one;
  one.push_back(std::move(request));
  return submit_all(std::move(one)).front();
}

std::vector<std::shared_ptr<RequestStream>> Engine::submit_all(std::vector<EngineRequest> requests) {
  for (const EngineRequest& request : requests) check(request);
  std::vector<std::shared_ptr<RequestStream>> streams;
  {
    std::lock_guard lock(mutex_);
    if (stop_ || in_flight_ + int64_t(requests.size()) > options_.max_queue + options_.max_batch) throw QueueFull();
    for (EngineRequest& request : requests) {
      auto sequence = std::make_unique<Sequence>(std::move(request), next_arrival_++);
      streams.push_back(sequence->stream);
      incoming_.push_back(std::move(sequence));
      ++in_flight_;
    }
  }
  wake_.notify_all();
  return streams;
}

EngineStats Engine::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

int64_t Engine::in_flight() const { return in_flight_; }

void Engine::cancel_all() {
  std::lock_guard lock(mutex_);
  for (auto& sequence : incoming_) sequence->stream->cancel();
  cancel_everything_ = true;
}

void Engine::loop() {
  while (true) {
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stop_ || !incoming_.empty() || !running_.empty() || !waiting_.empty(); });
      if (stop_) break;
      for (auto& sequence : incoming_) waiting_.push_back(std::move(sequence));
      incoming_.clear();
      if (cancel_everything_) {
        for (auto& sequence : waiting_) sequence->stream->cancel();
        for (auto& sequence : running_) sequence->stream->cancel();
        cancel_everything_ = false;
      }
    }
    try {
      step();
    } catch (const std::exception& e) {  // a failure of the step ends the requests it ran, not the server
      for (auto& sequence : running_) finish(*sequence, FinishReason::Error, e.what());
      running_.clear();
    }
    std::lock_guard lock(mutex_);
    stats_.running = int64_t(running_.size());
    stats_.waiting = int64_t(waiting_.size() + incoming_.size());
    stats_.kv_blocks_used = blocks_.in_use();
    stats_.kv_blocks_free = blocks_.available();
    stats_.kv_blocks_cached = blocks_.cached();
    stats_.expert_load = model_.expert_load();
  }
  for (auto& sequence : running_) finish(*sequence, FinishReason::Cancelled);
  for (auto& sequence : waiting_) finish(*sequence, FinishReason::Cancelled);
  for (auto& sequence : incoming_) finish(*sequence, FinishReason::Cancelled);
}

void Engine::release_blocks(Sequence& sequence) {
  for (int32_t block : sequence.blocks) blocks_.release(block);
  sequence.blocks.clear();
  sequence.keys.clear();
  sequence.computed = 0;
  sequence.mtp_computed = 0;
  sequence.draft = -1;
}

void Engine::finish(Sequence& sequence, FinishReason reason, const std::string& error) {
  if (sequence.done) return;
  sequence.done = true;
  release_blocks(sequence);
  --in_flight_;  // before the client hears of the end, so its next request finds the slot free
  sequence.stream->finish(reason, error);
}

void Engine::drop_cancelled() {
  for (auto& sequence : running_)
    if (sequence->stream->cancelled()) finish(*sequence, FinishReason::Cancelled);
  std::erase_if(running_, [](const auto& s) { return s->done; });
  for (auto& sequence : waiting_)
    if (sequence->stream->cancelled()) finish(*sequence, FinishReason::Cancelled);
  std::erase_if(waiting_, [](const auto& s) { return s->done; });
}

void Engine::preempt(Sequence& sequence) {
  release_blocks(sequence);  // its full blocks stay in the prefix cache until evicted
  auto it = std::find_if(running_.begin(), running_.end(), [&](const auto& s) { return s.get() == &sequence; });
  auto position = std::upper_bound(waiting_.begin(), waiting_.end(), sequence.arrival,
                                   [](uint64_t arrival, const auto& s) { return arrival < s->arrival; });
  waiting_.insert(position, std::move(*it));
  running_.erase(it);
  std::lock_guard lock(mutex_);
  ++stats_.preemptions;
}

bool Engine::ensure_blocks(Sequence& sequence, int64_t positions, std::vector<Sequence*>& scheduled) {
  while (int64_t(sequence.blocks.size()) * options_.block_tokens < positions) {
    const int32_t block = blocks_.allocate();
    if (block >= 0) {
      sequence.blocks.push_back(block);
      continue;
    }
    // Out of blocks: the newest running sequence not already in this step's batch gives its up.
    Sequence* victim = nullptr;
    for (auto& candidate : running_)
      if (std::find(scheduled.begin(), scheduled.end(), candidate.get()) == scheduled.end() &&
          (!victim || candidate->arrival > victim->arrival))
        victim = candidate.get();
    if (!victim || victim == &sequence) {
      preempt(sequence);
      return false;
    }
    preempt(*victim);
  }
  return true;
}

void Engine::admit_prefix(Sequence& sequence) {
  // Whole blocks only, and never the last token: its logits are needed, and the block that
  // receives it must be this sequence's own.
  const int64_t block_tokens = options_.block_tokens;
  int64_t reusable = (int64_t(sequence.tokens.size()) - 1) / block_tokens;
  if (sequence.scores_prompt())  // the positions whose logits score the prompt must run
    reusable = std::min(reusable, (sequence.request.prompt_logprobs_from - 1) / block_tokens);
  uint64_t key = 0;
  for (int64_t b = 0; b < reusable; ++b) {
    const std::span<const int32_t> span(sequence.tokens.data() + b * block_tokens, size_t(block_tokens));
    key = prefix_block_key(key, span);
    const int32_t block = blocks_.lookup(key, span);
    if (block < 0) break;
    sequence.blocks.push_back(block);
    sequence.keys.push_back(key);
  }
  sequence.computed = int64_t(sequence.blocks.size()) * block_tokens;
  // A cached block holds the MTP module's rows too (published after the step filled them); the one
  // at its last position was made with whatever token followed it then, which only costs drafts.
  sequence.mtp_computed = sequence.computed;
  sequence.stream->set_cached_tokens(sequence.computed);
  std::lock_guard lock(mutex_);
  stats_.prefix_queried_tokens += int64_t(sequence.tokens.size());
  stats_.prefix_hit_tokens += sequence.computed;
}

void Engine::publish_full_blocks(Sequence& sequence) {
  const int64_t block_tokens = options_.block_tokens;
  while (int64_t(sequence.keys.size()) < sequence.computed / block_tokens) {
    const size_t b = sequence.keys.size();
    const std::span<const int32_t> span(sequence.tokens.data() + int64_t(b) * block_tokens, size_t(block_tokens));
    const uint64_t key = prefix_block_key(sequence.keys.empty() ? 0 : sequence.keys.back(), span);
    blocks_.publish(sequence.blocks[b], key, span);
    sequence.keys.push_back(key);
  }
}

EngineToken Engine::choose(Sequence& sequence, float* logits) const {
  const int64_t vocab = model_.config().vocab_size;
  for (const int32_t id : options_.never_sample) logits[id] = -std::numeric_limits<float>::infinity();
  if (sequence.request.top_logprobs < 0)
    return {sequence.sampler.sample(std::span(logits, size_t(vocab)), sequence.tokens), 0.0f, {}};
  // Log-probabilities of the model's logits (never_sample excluded), not of what the sampler's
  // penalty and temperature make of them in place.
  thread_local std::vector<float> model_logits;
  model_logits.assign(logits, logits + vocab);
  const int32_t token = sequence.sampler.sample(std::span(logits, size_t(vocab)), sequence.tokens);
  return token_logprobs(model_logits.data(), vocab, token, sequence.request.top_logprobs);
}

void Engine::score_prompt(Sequence& sequence, int64_t first_position, int64_t rows, const float* logits) {
  const int64_t vocab = model_.config().vocab_size, from = sequence.request.prompt_logprobs_from;
  const int64_t begin = std::max(first_position, from - 1),
                end = std::min(first_position + rows, sequence.prompt_size - 1);
  model_.context().pool().parallel_for(std::max<int64_t>(end - begin, 0), 1, [&](int64_t lo, int64_t hi) {
    for (int64_t p = begin + lo; p < begin + hi; ++p)
      sequence.prompt_logprobs[size_t(p + 1 - from)] =
          token_logprobs(logits + (p - first_position) * vocab, vocab, sequence.tokens[size_t(p + 1)],
                         std::max<int64_t>(sequence.request.top_logprobs, 0));
  });
}

void Engine::deliver(Sequence& sequence, EngineToken token) {
  ++sequence.generated;
  {
    std::lock_guard lock(mutex_);
    ++stats_.generated_tokens;
  }
  const auto& stops = sequence.request.stop_tokens;
  if (std::find(stops.begin(), stops.end(), token.token) != stops.end()) {
    if (sequence.request.deliver_stop_token) sequence.stream->push(std::move(token));
    return finish(sequence, FinishReason::Stop);
  }
  sequence.tokens.push_back(token.token);
  sequence.stream->push(std::move(token));
  if (sequence.generated >= sequence.request.max_tokens || int64_t(sequence.tokens.size()) >= options_.context)
    finish(sequence, FinishReason::Length);
}

void Engine::step() {
  drop_cancelled();
  std::vector<Sequence*> scheduled, speculating;
  int64_t budget = options_.max_batch_tokens;
  // Speculate while the batch is small: a verify step reads each selected expert once for all its
  // positions, so with few sequences it costs about one step; with many, their tokens already
  // reach most experts and the drafts' extra positions are extra compute (docs/benchmarks.md "Multi-token prediction").
  int64_t decoders = 0;
  for (auto& sequence : running_) decoders += sequence->pending() == 1;
  const bool speculate = options_.speculative_tokens > 0 && decoders <= options_.speculative_max_batch;
  // Running sequences oldest first: those decoding (one token each) before those still in their
  // prompt, so a long prompt never stalls the replies in flight.
  for (const bool decoding : {true, false}) {
    std::vector<Sequence*> candidates;
    for (auto& sequence : running_)
      if ((sequence->pending() == 1) == decoding) candidates.push_back(sequence.get());
    for (Sequence* sequence : candidates) {
      if (budget == 0) break;
      if (std::find_if(running_.begin(), running_.end(), [&](const auto& s) { return s.get() == sequence; }) ==
          running_.end())
        continue;  // preempted by an older sequence of this step
      // Drafts up to what the request, the context and the budget leave room for; none for a request
      // that wants logprobs (they would be the verify rows', computed alike, but are not threaded through).
      const EngineRequest& r = sequence->request;
      const int64_t room = std::min({options_.speculative_tokens, r.max_tokens - sequence->generated - 1,
                                     options_.context - int64_t(sequence->tokens.size()) - 1, budget - 1});
      const int64_t drafts =
          decoding && speculate && sequence->draft >= 0 && r.top_logprobs < 0 ? std::max<int64_t>(room, 0) : 0;
      const int64_t chunk = std::min(sequence->pending(), budget) + drafts;
      if (!ensure_blocks(*sequence, sequence->computed + chunk, scheduled)) continue;
      sequence->chunk = chunk;
      sequence->drafts.assign(size_t(drafts), -1);
      if (drafts > 0) speculating.push_back(sequence);
      scheduled.push_back(sequence);
      budget -= chunk;
    }
  }
  // Then new (or preempted) requests, first come first served, while sequences, tokens and blocks last.
  while (!waiting_.empty() && int64_t(running_.size()) < options_.max_batch && budget > 0) {
    Sequence& sequence = *waiting_.front();
    admit_prefix(sequence);
    const int64_t chunk = std::min(sequence.pending(), budget);
    const int64_t needed = (sequence.computed + chunk + options_.block_tokens - 1) / options_.block_tokens -
                           int64_t(sequence.blocks.size());
    if (needed > blocks_.available()) {
      release_blocks(sequence);
      break;
    }
    for (int64_t b = 0; b < needed; ++b) sequence.blocks.push_back(blocks_.allocate());
    sequence.chunk = chunk;
    sequence.drafts.clear();
    scheduled.push_back(&sequence);
    budget -= chunk;
    auto position = std::upper_bound(running_.begin(), running_.end(), sequence.arrival,
                                     [](uint64_t arrival, const auto& s) { return arrival < s->arrival; });
    running_.insert(position, std::move(waiting_.front()));
    waiting_.pop_front();
  }
  if (scheduled.empty()) return;
  if (!speculating.empty()) draft_chains(speculating);

  std::vector<BatchSequence> batch;
  std::vector<const std::vector<int32_t>*> tables;
  std::vector<int64_t> first_row;                                // each sequence's first logits row
  std::vector<std::vector<int32_t>> verified(scheduled.size());  // a speculating sequence's [token, drafts]
  int64_t logit_rows = 0, tokens = 0;
  for (size_t i = 0; i < scheduled.size(); ++i) {
    Sequence* sequence = scheduled[i];
    if (!sequence->drafts.empty()) {
      verified[i].assign(1, sequence->tokens.back());
      verified[i].insert(verified[i].end(), sequence->drafts.begin(), sequence->drafts.end());
      batch.push_back({verified[i], sequence->computed, LogitsFor::AllTokens});
      tables.push_back(&sequence->blocks);
      first_row.push_back(logit_rows);
      logit_rows += batch.back().logit_rows();
      tokens += sequence->chunk;
      continue;
    }
    const bool last = sequence->chunk == sequence->pending();
    const LogitsFor which = sequence->scores_prompt() ? LogitsFor::AllTokens
                            : last                    ? LogitsFor::LastToken
                                                      : LogitsFor::None;
    batch.push_back({std::span(sequence->tokens).subspan(size_t(sequence->computed), size_t(sequence->chunk)),
                     sequence->computed, which});
    tables.push_back(&sequence->blocks);
    first_row.push_back(logit_rows);
    logit_rows += batch.back().logit_rows();
    tokens += sequence->chunk;
  }
  const int64_t vocab = model_.config().vocab_size;
  if (logits_.size() < size_t(logit_rows * vocab)) logits_.resize(size_t(logit_rows * vocab));
  cache_.bind(batch, tables);
  if (speculate) hidden_.resize(size_t(tokens * model_.config().hidden_size));
  model_.forward_batch(batch, cache_, logits_.data(), speculate ? hidden_.data() : nullptr);
  {
    std::lock_guard lock(mutex_);
    ++stats_.steps;
    stats_.tokens_computed += tokens;
    stats_.speculative_steps += speculating.empty() ? 0 : 1;
  }
  std::vector<Sequence*> sampling;  // with the logits row each samples from
  std::vector<float*> sampling_rows;
  for (size_t i = 0; i < scheduled.size(); ++i) {
    Sequence& sequence = *scheduled[i];
    float* rows = logits_.data() + first_row[i] * vocab;
    if (!sequence.drafts.empty()) {  // verified below; computed moves by what it keeps
      sampling.push_back(&sequence);
      sampling_rows.push_back(rows);
      continue;
    }
    if (batch[i].logits == LogitsFor::AllTokens) score_prompt(sequence, sequence.computed, sequence.chunk, rows);
    sequence.computed += sequence.chunk;
    publish_full_blocks(sequence);
    if (batch[i].logits == LogitsFor::None || sequence.pending() > 0) continue;
    if (sequence.computed == sequence.prompt_size && sequence.request.prompt_logprobs_from > 0)
      sequence.stream->set_prompt_logprobs(sequence.prompt_logprobs);
    if (sequence.request.max_tokens == 0) {  // the prompt was all it asked for
      finish(sequence, FinishReason::Length);
      continue;
    }
    sampling.push_back(&sequence);
    sampling_rows.push_back(rows + (batch[i].logit_rows() - 1) * vocab);
  }
  // Each sequence samples from its own row with its own generator: in parallel (a serial
  // loop cost a tenth of a 16-sequence step at top_p 0.9), delivered in batch order.
  std::vector<std::vector<EngineToken>> chosen(sampling.size());
  std::vector<int64_t> accepted(sampling.size(), 0);
  model_.context().pool().parallel_for(int64_t(sampling.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      Sequence& sequence = *sampling[size_t(k)];
      chosen[size_t(k)] = sequence.drafts.empty() ? std::vector<EngineToken>{choose(sequence, sampling_rows[size_t(k)])}
                                                  : verify(sequence, sampling_rows[size_t(k)], accepted[size_t(k)]);
    }
  });
  for (size_t k = 0; k < sampling.size(); ++k) {
    Sequence& sequence = *sampling[k];
    if (!sequence.drafts.empty()) {  // the pending token and the accepted drafts are now in the cache
      sequence.computed += 1 + accepted[k];
      publish_full_blocks(sequence);
      sequence.stream->add_speculation(int64_t(sequence.drafts.size()), accepted[k]);
      std::lock_guard lock(mutex_);
      stats_.draft_tokens += int64_t(sequence.drafts.size());
      stats_.accepted_tokens += accepted[k];
    }
    for (EngineToken& token : chosen[k]) {
      if (sequence.done) break;
      deliver(sequence, std::move(token));
    }
  }
  // The module's rows follow only while speculating: at a large batch its pass would cost every
  // step a layer and a head row per sequence for drafts no one verifies. A sequence whose rows
  // fell behind then decodes plainly to its end.
  if (speculate) extend_mtp(scheduled, batch);
  std::erase_if(running_, [](const auto& s) { return s->done; });
}

void Engine::draft_chains(std::span<Sequence* const> speculating) {
  // Draft 1 is at hand (the module's argmax at the last slot); draft j + 1 runs the module at the
  // next slot on draft j and the module's own state, for every speculating sequence at once.
  const Config& c = model_.config();
  const int64_t hidden = c.hidden_size, vocab = model_.draft_vocabulary();
  std::vector<Sequence*> chain;
  for (Sequence* sequence : speculating) sequence->drafts[0] = sequence->draft;
  for (size_t j = 1;; ++j) {
    chain.clear();
    for (Sequence* sequence : speculating)
      if (sequence->drafts.size() > j) chain.push_back(sequence);
    if (chain.empty()) return;
    std::vector<BatchSequence> batch;
    std::vector<const std::vector<int32_t>*> tables;
    states_.resize(chain.size() * size_t(hidden));
    for (size_t s = 0; s < chain.size(); ++s) {
      Sequence& sequence = *chain[s];
      batch.push_back(
          {std::span(sequence.drafts).subspan(j - 1, 1), sequence.computed + int64_t(j) - 1, LogitsFor::LastToken});
      tables.push_back(&sequence.blocks);
      std::copy(sequence.draft_state.begin(), sequence.draft_state.end(), states_.begin() + int64_t(s) * hidden);
    }
    draft_logits_.resize(chain.size() * size_t(vocab));
    cache_.bind(batch, tables);
    model_.draft_batch(0, batch, cache_, states_.data(), draft_logits_.data(), states_.data());
    for (size_t s = 0; s < chain.size(); ++s) {
      Sequence& sequence = *chain[s];
      sequence.drafts[j] = int32_t(first_argmax(draft_logits_.data() + int64_t(s) * vocab, vocab));
      std::copy_n(states_.begin() + int64_t(s) * hidden, hidden, sequence.draft_state.begin());
    }
  }
}

std::vector<EngineToken> Engine::verify(Sequence& sequence, float* rows, int64_t& accepted) {
  const int64_t vocab = model_.config().vocab_size;
  for (size_t j = 0; j <= sequence.drafts.size(); ++j)
    for (const int32_t id : options_.never_sample)
      rows[int64_t(j) * vocab + id] = -std::numeric_limits<float>::infinity();
  std::vector<int32_t> history = sequence.tokens;  // deliver() appends the kept tokens to the sequence
  const std::vector<int32_t> kept =
      verify_drafts(rows, vocab, sequence.drafts, sequence.sampler, sequence.request.sampling.temperature == 0.0f,
                    history, sequence.request.stop_tokens, accepted);
  std::vector<EngineToken> out;
  for (const int32_t token : kept) out.push_back({token, 0.0f, {}});
  return out;
}

void Engine::extend_mtp(std::span<Sequence* const> scheduled, std::span<const BatchSequence> batch) {
  // Slot p of the module pairs the model's normed row at position p with token p + 1: every
  // position of the step whose next token is known now, in the rows the step just wrote.
  const Config& c = model_.config();
  const int64_t hidden = c.hidden_size, vocab = model_.draft_vocabulary();
  std::vector<BatchSequence> slots;
  std::vector<const std::vector<int32_t>*> tables;
  std::vector<Sequence*> owners;
  states_.clear();
  int64_t row = 0;
  for (size_t i = 0; i < scheduled.size(); ++i) {
    Sequence& sequence = *scheduled[i];
    const int64_t first = batch[i].first_position, step_rows = int64_t(batch[i].tokens.size());
    const int64_t begin = std::max(sequence.mtp_computed, first);
    const int64_t end = std::min(sequence.computed, int64_t(sequence.tokens.size()) - 1);
    if (!sequence.done && begin < end && begin == sequence.mtp_computed) {
      slots.push_back(
          {std::span(sequence.tokens).subspan(size_t(begin + 1), size_t(end - begin)), begin, LogitsFor::LastToken});
      tables.push_back(&sequence.blocks);
      owners.push_back(&sequence);
      states_.insert(states_.end(), hidden_.begin() + (row + begin - first) * hidden,
                     hidden_.begin() + (row + end - first) * hidden);
      sequence.mtp_computed = end;
    } else if (begin != sequence.mtp_computed) {
      sequence.draft = -1;  // its rows fell behind (steps without speculation): no more drafts
    }
    row += step_rows;
  }
  if (slots.empty()) return;
  draft_logits_.resize(slots.size() * size_t(vocab));  // one row per sequence: its last slot's
  cache_.bind(slots, tables);
  model_.draft_batch(0, slots, cache_, states_.data(), draft_logits_.data(), states_.data());  // states in place
  int64_t state_row = 0;
  for (size_t s = 0; s < slots.size(); ++s) {
    Sequence& sequence = *owners[s];
    state_row += int64_t(slots[s].tokens.size());
    sequence.draft = int32_t(first_argmax(draft_logits_.data() + int64_t(s) * vocab, vocab));
    sequence.draft_state.assign(states_.begin() + (state_row - 1) * hidden, states_.begin() + state_row * hidden);
  }
}

}  // namespace deepmoe
