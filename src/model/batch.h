// A forward call's batch: chunks of several sequences run together, each at its own positions
// against its own latent rows. The projections and experts see all their tokens at once (the
// weights are read once per step, which is what makes batched serving fast); attention runs per
// sequence.
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>

namespace deepmoe {

enum class LogitsFor { None, AllTokens, LastToken };

// One sequence's share of a batch: `tokens` at positions first_position, first_position + 1, ...
struct BatchSequence {
  std::span<const int32_t> tokens;
  int64_t first_position = 0;
  LogitsFor logits = LogitsFor::LastToken;
  int64_t logit_rows() const {
    return logits == LogitsFor::None ? 0 : logits == LogitsFor::LastToken ? 1 : int64_t(tokens.size());
  }
};

// Where the sequences of a batch keep their latents (kv_lora_rank + qk_rope_head_dim values per
// token and layer): one contiguous cache (LatentCache) or pages (serve/paged_latent_cache.h).
class LatentRows {
 public:
  virtual ~LatentRows() = default;
  // Rows [0, first_position + n_tokens) of sequence `s` at `layer`, contiguous: the cached ones
  // filled; the caller writes the new ones, then calls commit (the buffer stays readable until the
  // next open of that sequence). The rows of every sequence of the batch may be open at once, and
  // different sequences may be opened and committed from different threads at the same time.
  virtual float* open(int64_t layer, size_t s) = 0;
  // Stores the new rows written into open()'s buffer.
  virtual void commit(int64_t layer, size_t s) = 0;
};

}  // namespace deepmoe
