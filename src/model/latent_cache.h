// MLA's point: per token and layer the cache holds only the normalized latent c_kv
// (kv_lora_rank values) followed by the rotated shared rope key (qk_rope_head_dim values),
// never the expanded per-head keys and values.
#pragma once
#include <cstdint>
#include <vector>

#include "model/config.h"

namespace deepmoe {

struct LatentCache {
  int64_t row_size = 0;  // kv_lora_rank + qk_rope_head_dim
  int64_t capacity = 0;  // tokens
  int64_t length = 0;    // tokens filled
  // [layer][capacity * row_size]: the main layers, then the MTP modules' (theirs filled only when
  // a speculative decoder drafts with them).
  std::vector<std::vector<float>> layers;

  // Allocates capacity tokens for every layer.
  LatentCache(const Config& config, int64_t capacity_tokens)
      : row_size(config.kv_cache_values_per_token()),
        capacity(capacity_tokens),
        layers(size_t(config.layer_count()), std::vector<float>(size_t(capacity_tokens * row_size))) {}

  float* layer(int64_t index) { return layers[size_t(index)].data(); }
  size_t bytes_per_token() const { return layers.size() * size_t(row_size) * sizeof(float); }
};

}  // namespace deepmoe
