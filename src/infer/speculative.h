// Speculative decoding with the model's own multi-token-prediction module (DeepSeek-V3 §5.4.3):
// each step the MTP module drafts K tokens (its argmax, feeding its own output back for drafts
// after the first), one forward of the main model over the K + 1 positions [last token, drafts]
// checks them, and the longest agreeing prefix is kept plus one token from the main model. The
// rejected positions' latent rows are simply overwritten later (the cache's length is rolled
// back). The output is the main model's: greedy gives the very tokens plain decoding gives, and
// sampling keeps its distribution (accept_draft).
#pragma once
#include <cstdint>
#include <functional>
#include <span>

#include "infer/generator.h"
#include "infer/sampler.h"
#include "model/model.h"

namespace deepmoe {

// The acceptance test for a draft token d chosen deterministically (the draft model's argmax, a
// point mass): accept with probability p[d], where p is the main model's distribution at that
// position (Sampler::distribution); on rejection return a draw from p with d removed. Returns d
// or the replacement; the output is distributed as p whatever d was (Leviathan et al. 2023).
int32_t accept_draft(std::span<const float> p, int32_t draft, Sampler& sampler, bool& accepted);

// generate() with draft_tokens = K > 0. Throws Error when the model holds no MTP module.
GenerationStats generate_speculative(Model& model, std::span<const int32_t> prompt, int64_t n_new,
                                     const SamplingParams& params, const std::function<bool(int32_t)>& on_token,
                                     int64_t draft_tokens);

}  // namespace deepmoe
