// The BPE model of a byte-level tokenizer: vocabulary, ranked merges, and the merge loop that
// turns one pre-tokenized word into ids (lowest-ranked adjacent pair first, leftmost on ties,
// exactly as HF tokenizers' Word::merge_all).
#pragma once
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace deepmoe {

// Hash for maps keyed by std::string that are searched with string_views (no allocation).
struct StringViewHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using TokenIds = std::unordered_map<std::string, int32_t, StringViewHash, std::equal_to<>>;

class BpeModel {
 public:
  // `vocab` maps byte-level token strings to ids; `merges` are pairs of token strings in rank
  // order (views only need to live through the constructor). Throws Error when a merge names a
  // token missing from the vocabulary or one of the 256 byte symbols is missing.
  BpeModel(TokenIds vocab, const std::vector<std::pair<std::string_view, std::string_view>>& merges,
           bool ignore_merges);

  // Appends the ids of one word given as raw bytes (mapped to byte-level symbols here).
  void encode_word(std::string_view bytes, std::vector<int32_t>& out) const;

  int32_t token_to_id(std::string_view token) const;  // -1 when absent
  const std::string& id_to_token(int32_t id) const;   // empty when absent
  // One past the largest id in the vocabulary.
  int32_t id_limit() const { return int32_t(id_to_token_.size()); }
  size_t vocab_size() const { return vocab_.size(); }
  size_t merge_count() const { return merge_count_; }

 private:
  struct Merge {
    int32_t rank, merged_id;
  };
  // Open addressing over (left, right) id pairs: a merge lookup per adjacent pair is the
  // inner loop of encoding, and std::unordered_map's buckets cost twice as much.
  struct MergeSlot {
    uint64_t key = kEmpty;
    Merge merge{};
  };
  static constexpr uint64_t kEmpty = ~uint64_t(0);
  static uint64_t pair_key(int32_t left, int32_t right) { return (uint64_t(uint32_t(left)) << 32) | uint32_t(right); }
  size_t slot_of(uint64_t key) const { return size_t((key * 0x9E3779B97F4A7C15ull) >> merge_shift_); }
  const Merge* find_merge(int32_t left, int32_t right) const;
  void insert_merge(uint64_t key, Merge merge);
  void merge_small(std::vector<int32_t>& symbols) const;
  void merge_large(std::vector<int32_t>& symbols) const;

  // Words seen before, with their ids: text repeats its words, and a hit skips the merge loop
  // (measured: 1.6x faster encoding of mixed text). Bounded; shared by threads under a mutex.
  struct CachedIds {
    uint32_t offset, count;
  };
  static constexpr size_t kCacheEntries = 1 << 16, kCacheWordBytes = 32;
  bool cached(std::string_view bytes, std::vector<int32_t>& out) const;
  void remember(std::string_view bytes, const int32_t* ids, size_t count) const;
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, CachedIds, StringViewHash, std::equal_to<>> cache_;
  mutable std::vector<int32_t> cache_ids_;

  TokenIds vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<MergeSlot> merge_table_;
  int merge_shift_ = 64;
  size_t merge_count_ = 0;
  int32_t byte_ids_[256];
  bool ignore_merges_;
};

}  // namespace deepmoe
