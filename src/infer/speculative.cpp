#include "infer/speculative.h"

#include <algorithm>
#include <chrono>
#include <vector>

#include "core/error.h"
#include "kernels/ops.h"

namespace deepmoe {

int32_t accept_draft(std::span<const float> p, int32_t draft, Sampler& sampler, bool& accepted) {
  // P(output = d) = p[d]; P(output = t ≠ d) = (1 − p[d]) · p[t] / (1 − p[d]) = p[t].
  accepted = sampler.uniform() < double(p[size_t(draft)]);
  if (accepted) return draft;
  std::vector<float> rest(p.begin(), p.end());
  rest[size_t(draft)] = 0.0f;
  return sampler.draw(rest);
}

namespace {

// One sequence's speculative decode: the main model's cache holds positions [0, length); the MTP
// module's rows [0, length − 1) hold (h_i, t_{i+1}) for every position whose next token is known.
class SpeculativeDecoder {
 public:
  SpeculativeDecoder(Model& model, std::span<const int32_t> prompt, int64_t n_new, const SamplingParams& params,
                     int64_t drafts)
      : model_(model),
        c_(model.config()),
        k_(drafts),
        sampler_(params),
        greedy_(params.temperature == 0.0f),
        cache_(c_, int64_t(prompt.size()) + n_new + drafts + 1),
        history_(prompt.begin(), prompt.end()),
        logits_(size_t((drafts + 1) * c_.vocab_size)),
        hidden_(size_t(std::max<int64_t>(kPrefillChunk, drafts + 1) * c_.hidden_size)),
        draft_logits_(size_t(c_.vocab_size)),
        draft_hidden_(size_t(drafts + 1) * size_t(c_.hidden_size)) {
    if (c_.num_nextn_predict_layers == 0)
      fail(
          "speculative decoding with MTP needs a model with a multi-token-prediction module "
          "(num_nextn_predict_layers > 0 and its model.layers.{}.* tensors); this one has none",
          c_.num_hidden_layers);
  }

  // Runs the prompt through the main model and the MTP module; returns the first token.
  int32_t prefill(std::span<const int32_t> prompt) {
    const int64_t n = int64_t(prompt.size()), hidden = c_.hidden_size;
    std::vector<float> last(static_cast<size_t>(hidden));
    for (int64_t first = 0; first < n; first += kPrefillChunk) {
      const int64_t count = std::min<int64_t>(kPrefillChunk, n - first);
      model_.forward(prompt.subspan(size_t(first), size_t(count)), cache_, LogitsFor::LastToken, logits_.data(),
                     hidden_.data());
      // The chunk's positions whose next token is in the prompt; the last one waits for the first
      // generated token.
      const int64_t known = first + count < n ? count : count - 1;
      if (known > 0)
        model_.draft(0, prompt.subspan(size_t(first + 1), size_t(known)), first, cache_, hidden_.data(),
                     LogitsFor::None, nullptr);
      std::copy_n(hidden_.data() + (count - 1) * hidden, hidden, last.data());
    }
    const int32_t token = choose(std::span(logits_.data(), size_t(c_.vocab_size)));
    // MTP slot n − 1: (h_{n−1}, the token) drafts the token after it.
    model_.draft(0, std::span(&token, 1), n - 1, cache_, last.data(), LogitsFor::LastToken, draft_logits_.data(),
                 draft_hidden_.data());
    return token;
  }

  // One step after `token` (the last token chosen, not yet in the main cache): drafts, verifies,
  // and returns the tokens it adds (accepted drafts, then the main model's own).
  std::vector<int32_t> step(int32_t token, GenerationStats& stats) {
    const int64_t vocab = c_.vocab_size, position = cache_.length;
    // Draft K tokens: the first from the MTP output already at hand, each next one by feeding the
    // module its own draft and output state at the next position.
    std::vector<int32_t> verify = {token};
    for (int64_t j = 0; j < k_; ++j) {
      const int32_t draft = int32_t(first_argmax(draft_logits_.data(), vocab));
      verify.push_back(draft);
      if (j + 1 < k_)
        model_.draft(0, std::span(&verify.back(), 1), position + j, cache_, draft_hidden_.data(), LogitsFor::LastToken,
                     draft_logits_.data(), draft_hidden_.data());
    }
    // Verify: one pass of the main model over [token, d_1..d_K].
    model_.forward(verify, cache_, LogitsFor::AllTokens, logits_.data(), hidden_.data());
    std::vector<int32_t> out;
    int64_t accepted = 0;
    int32_t next = 0;
    for (; accepted <= k_; ++accepted) {
      const std::span<float> row(logits_.data() + accepted * vocab, size_t(vocab));
      if (accepted == k_) {  // every draft kept: the main model's token after them
        next = choose(row);
        break;
      }
      const int32_t draft = verify[size_t(accepted + 1)];
      bool kept = false;
      if (greedy_) {
        next = sampler_.sample(row, history_);
        kept = next == draft;
      } else {
        next = accept_draft(sampler_.distribution(row, history_), draft, sampler_, kept);
      }
      if (!kept) break;
      out.push_back(draft);
      history_.push_back(draft);
      ++stats.accepted_at[size_t(accepted)];
    }
    out.push_back(next);
    history_.push_back(next);
    stats.verify_steps += 1;
    stats.drafted += k_;
    stats.accepted += accepted;
    // Roll the main cache back to the kept positions, then the MTP module's rows for them: slot
    // position + m pairs h_{position+m} with the token after it.
    cache_.length = position + 1 + accepted;
    model_.draft(0, out, position, cache_, hidden_.data(), LogitsFor::LastToken, draft_logits_.data(),
                 draft_hidden_.data());
    // The next draft chain continues from the last slot's state.
    std::copy_n(draft_hidden_.data() + accepted * c_.hidden_size, c_.hidden_size, draft_hidden_.data());
    return out;
  }

 private:
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
  std::vector<int32_t> history_;
  std::vector<float> logits_, hidden_, draft_logits_, draft_hidden_;
};

}  // namespace

GenerationStats generate_speculative(Model& model, std::span<const int32_t> prompt, int64_t n_new,
                                     const SamplingParams& params, const std::function<bool(int32_t)>& on_token,
                                     int64_t draft_tokens) {
  if (prompt.empty()) fail("generate: the prompt has no tokens");
  SpeculativeDecoder decoder(model, prompt, n_new, params, draft_tokens);
  GenerationStats stats;
  stats.prompt_tokens = int64_t(prompt.size());
  stats.accepted_at.assign(size_t(draft_tokens), 0);
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
