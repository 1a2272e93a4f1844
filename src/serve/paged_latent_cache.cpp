#include "serve/paged_latent_cache.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"

namespace deepmoe {

PagedLatentCache::PagedLatentCache(const Config& config, int64_t layers, int64_t n_blocks, int64_t block_tokens)
    : row_size_(config.kv_cache_values_per_token()), n_blocks_(n_blocks), block_tokens_(block_tokens) {
  for (int64_t layer = 0; layer < layers; ++layer)
    layers_.emplace_back(new float[size_t(n_blocks * block_tokens * row_size_)]);
}

int64_t PagedLatentCache::blocks_for_bytes(const Config& config, int64_t layers, int64_t block_tokens, int64_t bytes) {
  const int64_t block_bytes = layers * block_tokens * config.kv_cache_values_per_token() * int64_t(sizeof(float));
  return std::max<int64_t>(1, bytes / block_bytes);
}

void PagedLatentCache::bind(std::span<const BatchSequence> batch,
                            std::span<const std::vector<int32_t>* const> block_tables) {
  if (batch.size() != block_tables.size())
    fail("paged cache: {} sequences but {} block tables", batch.size(), block_tables.size());
  for (size_t s = 0; s < batch.size(); ++s) {
    const int64_t needed = batch[s].first_position + int64_t(batch[s].tokens.size());
    if (int64_t(block_tables[s]->size()) * block_tokens_ < needed)
      fail("paged cache: sequence {} needs {} positions but holds {} blocks", s, needed, block_tables[s]->size());
  }
  batch_ = batch;
  tables_ = block_tables;
  if (gathered_.size() < batch.size()) gathered_.resize(batch.size());
}

float* PagedLatentCache::open(int64_t layer, size_t s) {
  const int64_t cached = batch_[s].first_position, total = cached + int64_t(batch_[s].tokens.size());
  std::vector<float>& gathered = gathered_[s];
  if (gathered.size() < size_t(total * row_size_)) gathered.resize(size_t(total * row_size_));
  const std::vector<int32_t>& table = *tables_[s];
  for (int64_t first = 0; first < cached; first += block_tokens_) {
    const int64_t count = std::min(block_tokens_, cached - first);
    std::memcpy(gathered.data() + first * row_size_, block_rows(layer, table[size_t(first / block_tokens_)]),
                size_t(count * row_size_) * sizeof(float));
  }
  return gathered.data();
}

void PagedLatentCache::commit(int64_t layer, size_t s) {
  const int64_t first_new = batch_[s].first_position, total = first_new + int64_t(batch_[s].tokens.size());
  const std::vector<int32_t>& table = *tables_[s];
  for (int64_t position = first_new; position < total;) {
    const int64_t in_block = position % block_tokens_, count = std::min(block_tokens_ - in_block, total - position);
    std::memcpy(block_rows(layer, table[size_t(position / block_tokens_)]) + in_block * row_size_,
                gathered_[s].data() + position * row_size_, size_t(count * row_size_) * sizeof(float));
    position += count;
  }
}

}  // namespace deepmoe
