// Bookkeeping of the paged latent cache: fixed-size blocks of token positions, reference counts
// (a block shared by several sequences' prefixes is stored once), a free list, and the prefix
// cache: a full block can be published under a key that hashes its tokens and every token
// before them; a later sequence that starts with the same tokens takes the block instead of
// recomputing it. Published blocks nobody holds stay cached until a fresh block is needed, then
// go least recently used first. Not thread-safe: the engine's step loop owns it.
#pragma once
#include <cstdint>
#include <list>
#include <span>
#include <unordered_map>
#include <vector>

namespace deepmoe {

// The key of a block: its tokens chained onto the key of the block before it (0 for the first).
uint64_t prefix_block_key(uint64_t previous_key, std::span<const int32_t> tokens);

class BlockPool {
 public:
  BlockPool(int64_t n_blocks, int64_t block_tokens);

  int64_t block_tokens() const { return block_tokens_; }
  int64_t size() const { return int64_t(refs_.size()); }
  // Blocks a sequence could get now: free ones and cached ones nobody holds.
  int64_t available() const { return int64_t(free_.size() + lru_.size()); }
  // Blocks held by at least one sequence.
  int64_t in_use() const { return size() - available(); }
  int64_t cached() const { return int64_t(lru_.size()); }

  // A block for new contents, held once: from the free list, else the least recently used cached
  // block (forgotten by the prefix cache); -1 when every block is held.
  int32_t allocate();
  // The published block with this key and these tokens, held once more; -1 if there is none.
  int32_t lookup(uint64_t key, std::span<const int32_t> tokens);
  // Makes a held, full block findable by lookup (a no-op when the key is already published).
  void publish(int32_t block, uint64_t key, std::span<const int32_t> tokens);
  void release(int32_t block);

 private:
  struct Published {
    uint64_t key = 0;
    std::vector<int32_t> tokens;  // compared on lookup: a key collision never serves wrong rows
    bool valid = false;
  };
  void forget(int32_t block);

  int64_t block_tokens_;
  std::vector<int32_t> refs_;
  std::vector<Published> published_;
  std::vector<int32_t> free_;
  std::list<int32_t> lru_;  // cached blocks nobody holds, least recently used first
  std::vector<std::list<int32_t>::iterator> lru_position_;
  std::vector<bool> in_lru_;
  std::unordered_map<uint64_t, int32_t> by_key_;
};

}  // namespace deepmoe
