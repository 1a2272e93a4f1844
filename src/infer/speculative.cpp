#include "infer/speculative.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"
#include "kernels/ops.h"

namespace deepmoe {

int32_t accept_draft(std::span<const float> p, int32_t draft, Sampler& sampler, bool& accepted) {
  // P(output = d) = p[d]; P(output = t ≠ d) = (1 − p[d]) · p[t] / (1 − p[d]) = p[t].
  accepted = sampler.uniform() < double(p[size_t(draft)]);
  return accepted ? draft : sampler.draw(p, draft);
}

std::vector<int32_t> verify_drafts(float* rows, int64_t vocab, std::span<const int32_t> drafts, Sampler& sampler,
                                   bool greedy, std::vector<int32_t>& history, std::span<const int32_t> stops,
                                   int64_t& accepted) {
  std::vector<int32_t> out;
  accepted = 0;
  for (size_t j = 0; j <= drafts.size(); ++j) {
    const std::span<float> row(rows + int64_t(j) * vocab, size_t(vocab));
    if (j == drafts.size()) {  // every draft kept: the model's own token after them
      out.push_back(sampler.sample(row, history));
      history.push_back(out.back());
      break;
    }
    bool kept = false;
    int32_t token = 0;
    if (greedy) {
      token = sampler.sample(row, history);
      kept = token == drafts[j];
    } else {
      token = accept_draft(sampler.distribution(row, history), drafts[j], sampler, kept);
    }
    out.push_back(token);
    history.push_back(token);
    if (!kept) break;
    ++accepted;
    // A stop token ends the sequence: what the drafts say after it does not matter.
    if (std::find(stops.begin(), stops.end(), token) != stops.end()) break;
  }
  return out;
}

namespace {

// Slot i of the module pairs the main model's h_i with token i + 1 and drafts token i + 2.
class MtpDrafter final : public Drafter {
 public:
  MtpDrafter(Model& model, LatentCache& cache)
      : model_(model),
        cache_(cache),
        logits_(size_t(model.draft_vocabulary())),
        state_(size_t(model.config().hidden_size)) {
    const Config& c = model.config();
    if (c.num_nextn_predict_layers == 0)
      fail(
          "speculative decoding with MTP needs a model with a multi-token-prediction module "
          "(num_nextn_predict_layers > 0 and its model.layers.{}.* tensors); this one has none",
          c.num_hidden_layers);
  }

  void observe(std::span<const int32_t> tokens, int64_t first, const float* hidden, int32_t next) override {
    std::vector<int32_t> following(tokens.begin() + 1, tokens.end());
    following.push_back(next);
    states_.resize(following.size() * state_.size());
    model_.draft(0, following, first, cache_, hidden, LogitsFor::LastToken, logits_.data(), states_.data());
    std::copy(states_.end() - std::ptrdiff_t(state_.size()), states_.end(), state_.begin());
    position_ = first + int64_t(tokens.size());  // the position `next` will take
  }

  std::vector<int32_t> draft(int64_t k) override {
    std::vector<int32_t> out;
    for (int64_t j = 0; j < k; ++j) {
      out.push_back(int32_t(first_argmax(logits_.data(), int64_t(logits_.size()))));
      // The module at the next slot: the draft just made, and the module's own state.
      if (j + 1 < k)
        model_.draft(0, std::span(&out.back(), 1), position_ + j, cache_, state_.data(), LogitsFor::LastToken,
                     logits_.data(), state_.data());
    }
    return out;
  }

 private:
  Model& model_;
  LatentCache& cache_;
  std::vector<float> logits_, state_, states_;
  int64_t position_ = 0;
};

// Its cache holds fed_ (every final token it has run, then drafts it fed itself); what the main
// model made final since is run before the next drafts.
class ModelDrafter final : public Drafter {
 public:
  ModelDrafter(Model& model, const Config& main, int64_t capacity)
      : model_(model), cache_(model.config(), capacity), logits_(size_t(model.config().vocab_size)) {
    if (model.config().vocab_size != main.vocab_size)
      fail("the draft model's vocabulary has {} ids, the model's {}: a draft model must share the tokenizer",
           model.config().vocab_size, main.vocab_size);
  }

  void observe(std::span<const int32_t> tokens, int64_t, const float*, int32_t next) override {
    final_.insert(final_.end(), tokens.begin(), tokens.end());
    // `next` is final too; the main model ran tokens but not next yet: keep both in one list.
    final_.push_back(next);
    size_t common = 0;
    while (common < fed_.size() && common < final_.size() && fed_[common] == final_[common]) ++common;
    fed_.resize(common);
    cache_.length = int64_t(common);
    final_.pop_back();
    next_ = next;
  }

  std::vector<int32_t> draft(int64_t k) override {
    std::vector<int32_t> pending(final_.begin() + std::ptrdiff_t(fed_.size()), final_.end());
    pending.push_back(next_);
    std::vector<int32_t> out;
    for (int64_t j = 0; j < k; ++j) {
      model_.forward(pending, cache_, LogitsFor::LastToken, logits_.data());
      fed_.insert(fed_.end(), pending.begin(), pending.end());
      out.push_back(int32_t(first_argmax(logits_.data(), int64_t(logits_.size()))));
      pending.assign(1, out.back());
    }
    return out;
  }

 private:
  Model& model_;
  LatentCache cache_;
  std::vector<float> logits_;
  std::vector<int32_t> final_, fed_;  // final_: every final token before next_
  int32_t next_ = 0;
};

// One sequence's speculative decode.
class SpeculativeDecoder {
 public:
  SpeculativeDecoder(Model& model, std::span<const int32_t> prompt, int64_t n_new, const SamplingParams& params,
                     const Speculation& speculation)
      : model_(model),
        c_(model.config()),
        k_(speculation.tokens),
        sampler_(params),
        greedy_(params.temperature == 0.0f),
        cache_(c_, int64_t(prompt.size()) + n_new + k_ + 1),
        drafter_(speculation.draft_model ? model_drafter(*speculation.draft_model, c_, cache_.capacity)
                                         : mtp_drafter(model, cache_)),
        history_(prompt.begin(), prompt.end()),
        logits_(size_t((k_ + 1) * c_.vocab_size)),
        hidden_(size_t(std::max<int64_t>(kPrefillChunk, k_ + 1) * c_.hidden_size)) {}

  // Runs the prompt through the main model and the drafter; returns the first token.
  int32_t prefill(std::span<const int32_t> prompt) {
    const int64_t n = int64_t(prompt.size());
    for (int64_t first = 0; first < n; first += kPrefillChunk) {
      const int64_t count = std::min<int64_t>(kPrefillChunk, n - first);
      const auto chunk = prompt.subspan(size_t(first), size_t(count));
      model_.forward(chunk, cache_, LogitsFor::LastToken, logits_.data(), hidden_.data());
      const int32_t next = first + count < n ? prompt[size_t(first + count)] : choose(first_row());
      drafter_->observe(chunk, first, hidden_.data(), next);
      if (first + count == n) return next;
    }
    fail("generate: the prompt has no tokens");
  }

  // One step after `token` (the last token chosen, not yet in the main cache): drafts, verifies,
  // and returns the tokens it adds (accepted drafts, then the main model's own).
  std::vector<int32_t> step(int32_t token, GenerationStats& stats) {
    const int64_t position = cache_.length;
    std::vector<int32_t> verify = {token};
    for (const int32_t d : drafter_->draft(k_)) verify.push_back(d);
    model_.forward(verify, cache_, LogitsFor::AllTokens, logits_.data(), hidden_.data());
    stats.experts_read += model_.experts_read();
    int64_t accepted = 0;
    std::vector<int32_t> out = verify_drafts(logits_.data(), c_.vocab_size, std::span(verify).subspan(1), sampler_,
                                             greedy_, history_, {}, accepted);
    for (int64_t j = 0; j < accepted; ++j) ++stats.accepted_at[size_t(j)];
    stats.verify_steps += 1;
    stats.drafted += k_;
    stats.accepted += accepted;
    // Roll the main cache back to the kept positions: token and the accepted drafts.
    cache_.length = position + 1 + accepted;
    drafter_->observe(std::span(verify).first(size_t(accepted + 1)), position, hidden_.data(), out.back());
    return out;
  }

 private:
  std::span<float> first_row() { return {logits_.data(), size_t(c_.vocab_size)}; }
  int32_t choose(std::span<float> row) {
    const int32_t token = sampler_.sample(row, history_);
    history_.push_back(token);
    return token;
  }

  Model& model_;
  const Config& c_;
  int64_t k_;
  Sampler sampler_;
  bool greedy_;
  LatentCache cache_;
  std::unique_ptr<Drafter> drafter_;
  std::vector<int32_t> history_;
  std::vector<float> logits_, hidden_;
};

}  // namespace

std::unique_ptr<Drafter> mtp_drafter(Model& model, LatentCache& cache) {
  return std::make_unique<MtpDrafter>(model, cache);
}

std::unique_ptr<Drafter> model_drafter(Model& draft_model, const Config& main_config, int64_t capacity) {
  return std::make_unique<ModelDrafter>(draft_model, main_config, capacity);
}

GenerationStats generate_speculative(Model& model, std::span<const int32_t> prompt, int64_t n_new,
                                     const SamplingParams& params, const std::function<bool(int32_t)>& on_token,
                                     const Speculation& speculation) {
  if (prompt.empty()) fail("generate: the prompt has no tokens");
  SpeculativeDecoder decoder(model, prompt, n_new, params, speculation);
  GenerationStats stats;
  stats.prompt_tokens = int64_t(prompt.size());
  stats.accepted_at.assign(size_t(speculation.tokens), 0);
  if (n_new == 0) return stats;
  using Clock = std::chrono::steady_clock;
  auto start = Clock::now();
  int32_t token = decoder.prefill(prompt);
  stats.prefill_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  stats.generated_tokens = 1;
  bool more = on_token(token);
  start = Clock::now();
  while (more && stats.generated_tokens < n_new) {
    const std::vector<int32_t> added = decoder.step(token, stats);
    for (const int32_t t : added) {
      token = t;
      ++stats.generated_tokens;
      more = on_token(t);
      if (!more || stats.generated_tokens >= n_new) break;
    }
  }
  stats.decode_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return stats;
}

}  // namespace deepmoe
