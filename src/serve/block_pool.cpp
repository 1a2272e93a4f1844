#include "serve/block_pool.h"

#include "core/error.h"

namespace deepmoe {

uint64_t prefix_block_key(uint64_t previous_key, std::span<const int32_t> tokens) {
  // FNV-1a over the previous key and the tokens, then a final avalanche (splitmix64).
  uint64_t h = 1469598103934665603ull ^ previous_key;
  auto mix = [&h](uint64_t value) {
    for (int byte = 0; byte < 8; ++byte) {
      h ^= (value >> (8 * byte)) & 0xff;
      h *= 1099511628211ull;
    }
  };
  mix(previous_key);
  for (int32_t token : tokens) mix(uint32_t(token));
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  return h ^ (h >> 31);
}

BlockPool::BlockPool(int64_t n_blocks, int64_t block_tokens)
    : block_tokens_(block_tokens),
      refs_(size_t(n_blocks), 0),
      published_(size_t(n_blocks)),
      lru_position_(size_t(n_blocks)),
      in_lru_(size_t(n_blocks), false) {
  if (n_blocks < 1 || block_tokens < 1) fail("a block pool needs at least one block of at least one token");
  for (int64_t b = n_blocks - 1; b >= 0; --b) free_.push_back(int32_t(b));
}

void BlockPool::forget(int32_t block) {
  Published& p = published_[size_t(block)];
  if (!p.valid) return;
  auto it = by_key_.find(p.key);
  if (it != by_key_.end() && it->second == block) by_key_.erase(it);
  p = Published{};
}

int32_t BlockPool::allocate() {
  int32_t block = -1;
  if (!free_.empty()) {
    block = free_.back();
    free_.pop_back();
  } else if (!lru_.empty()) {
    block = lru_.front();
    lru_.pop_front();
    in_lru_[size_t(block)] = false;
    forget(block);
  } else {
    return -1;
  }
  refs_[size_t(block)] = 1;
  return block;
}

int32_t BlockPool::lookup(uint64_t key, std::span<const int32_t> tokens) {
  auto it = by_key_.find(key);
  if (it == by_key_.end()) return -1;
  const int32_t block = it->second;
  const Published& p = published_[size_t(block)];
  if (!std::equal(tokens.begin(), tokens.end(), p.tokens.begin(), p.tokens.end())) return -1;
  if (in_lru_[size_t(block)]) {
    lru_.erase(lru_position_[size_t(block)]);
    in_lru_[size_t(block)] = false;
  }
  ++refs_[size_t(block)];
  return block;
}

void BlockPool::publish(int32_t block, uint64_t key, std::span<const int32_t> tokens) {
  if (published_[size_t(block)].valid || by_key_.count(key)) return;
  published_[size_t(block)] = Published{key, std::vector<int32_t>(tokens.begin(), tokens.end()), true};
  by_key_[key] = block;
}

void BlockPool::release(int32_t block) {
  if (refs_[size_t(block)] <= 0) fail("block {} released more often than held", block);
  if (--refs_[size_t(block)] > 0) return;
  if (published_[size_t(block)].valid) {
    lru_position_[size_t(block)] = lru_.insert(lru_.end(), block);
    in_lru_[size_t(block)] = true;
  } else {
    free_.push_back(block);
  }
}

}  // namespace deepmoe
