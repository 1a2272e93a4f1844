// Speculative decoding: each step a drafter proposes K tokens, one forward of the main model over
// the K + 1 positions [last token, drafts] checks them, and the longest agreeing prefix is kept
// plus one token of the main model's. The rejected positions' latent rows are simply overwritten
// later (the cache's length is rolled back). The output is the main model's: greedy gives the
// very tokens plain decoding gives, and sampling keeps its distribution (accept_draft).
// Drafters: the model's own multi-token-prediction module (DeepSeek-V3 §5.4.3), or a smaller
// model over the same vocabulary.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "infer/generator.h"
#include "infer/sampler.h"
#include "model/model.h"

namespace deepmoe {

// The acceptance test for a draft token d chosen deterministically (the drafter's argmax, a point
// mass): accept with probability p[d], where p is the main model's distribution at that position
// (Sampler::distribution); on rejection return a draw from p with d removed. Returns d or the
// replacement; the output is distributed as p whatever d was (Leviathan et al. 2023).
int32_t accept_draft(std::span<const float> p, int32_t draft, Sampler& sampler, bool& accepted);

// One sequence's drafts checked against the model's rows of one verify pass: row j ([vocab]
// logits, j = 0 .. drafts.size()) is the model after the pending token and drafts 1..j. Keeps
// drafts while they pass (greedy: the model's own choice; sampling: accept_draft), then the
// model's token from the row where one failed or from the last row; a kept draft in `stops` ends
// it there. Appends the kept tokens to `history` (what the sampler's repetition penalty sees)
// and returns them; `accepted` receives how many drafts were kept.
std::vector<int32_t> verify_drafts(float* rows, int64_t vocab, std::span<const int32_t> drafts, Sampler& sampler,
                                   bool greedy, std::vector<int32_t>& history, std::span<const int32_t> stops,
                                   int64_t& accepted);

// Proposes tokens for one sequence. The decoder tells it what became final, then asks for drafts.
class Drafter {
 public:
  virtual ~Drafter() = default;
  // The main model ran `tokens` at positions first, first + 1, ... and they are final; `hidden`
  // holds their states after the final norm, [tokens, hidden]; `next` is the token that follows
  // them (also final, not yet run by the main model).
  virtual void observe(std::span<const int32_t> tokens, int64_t first, const float* hidden, int32_t next) = 0;
  // k tokens to follow `next`, each the drafter's most likely.
  virtual std::vector<int32_t> draft(int64_t k) = 0;
};

// The main model's MTP module 0, drafting with its latent rows in the main model's cache (layer
// num_hidden_layers); drafts after the first feed the module its own output. Throws Error when
// the model has no module.
std::unique_ptr<Drafter> mtp_drafter(Model& model, LatentCache& cache);
// A smaller model over the same vocabulary (Error otherwise), with its own cache of `capacity`
// positions.
std::unique_ptr<Drafter> model_drafter(Model& draft_model, const Config& main_config, int64_t capacity);

// What drafts: the MTP module, or `draft_model` (not owned) when set; `tokens` a step (K > 0).
struct Speculation {
  int64_t tokens = 0;
  Model* draft_model = nullptr;
};

// generate() with speculation.tokens > 0.
GenerationStats generate_speculative(Model& model, std::span<const int32_t> prompt, int64_t n_new,
                                     const SamplingParams& params, const std::function<bool(int32_t)>& on_token,
                                     const Speculation& speculation);

}  // namespace deepmoe
