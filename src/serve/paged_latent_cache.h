// The server's latent cache: blocks of `block_tokens` positions × every layer's latent rows,
// addressed through each sequence's block table (BlockPool decides which blocks). Memory is
// fixed at start (--kv-cache-mb) and shared by whatever sequences are in flight.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "model/batch.h"
#include "model/config.h"

namespace deepmoe {

class PagedLatentCache final : public LatentRows {
 public:
  // layers: the main ones (config.num_hidden_layers), or with the MTP modules' (layer_count()).
  PagedLatentCache(const Config& config, int64_t layers, int64_t n_blocks, int64_t block_tokens);

  // Blocks of block_tokens that fit in `bytes` for this config and layer count (at least 1).
  static int64_t blocks_for_bytes(const Config& config, int64_t layers, int64_t block_tokens, int64_t bytes);
  int64_t n_blocks() const { return n_blocks_; }
  int64_t block_tokens() const { return block_tokens_; }

  // The batch the next forward_batch runs, with each sequence's block table (covering at least
  // its first_position + tokens.size() positions). Both must outlive the forward call.
  void bind(std::span<const BatchSequence> batch, std::span<const std::vector<int32_t>* const> block_tables);

  // LatentRows: a sequence's rows gathered into one contiguous buffer, new rows scattered back.
  float* open(int64_t layer, size_t s) override;
  void commit(int64_t layer, size_t s) override;

 private:
  float* block_rows(int64_t layer, int32_t block) {
    return layers_[size_t(layer)].get() + int64_t(block) * block_tokens_ * row_size_;
  }

  int64_t row_size_, n_blocks_, block_tokens_;
  // [layer][n_blocks * block_tokens * row_size], left uninitialized: the pages of blocks never
  // used are never touched, so resident memory follows the tokens in flight, not the pool size.
  std::vector<std::unique_ptr<float[]>> layers_;
  std::span<const BatchSequence> batch_;
  std::span<const std::vector<int32_t>* const> tables_;
  std::vector<std::vector<float>> gathered_;  // per sequence of the batch
};

}  // namespace deepmoe
