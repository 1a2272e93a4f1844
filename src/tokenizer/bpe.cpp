#include "tokenizer/bpe.h"

#include <queue>

#include "core/error.h"
#include "tokenizer/byte_level.h"

namespace deepmoe {

BpeModel::BpeModel(TokenIds vocab, const std::vector<std::pair<std::string_view, std::string_view>>& merges,
                   bool ignore_merges)
    : vocab_(std::move(vocab)), ignore_merges_(ignore_merges) {
  int32_t max_id = -1;
  for (const auto& [token, id] : vocab_) {
    if (id < 0) fail("vocabulary: token '{}' has negative id {}", token, id);
    max_id = std::max(max_id, id);
  }
  // Ids index a table, so they must be (nearly) dense, as every real vocabulary is.
  if (size_t(max_id) >= vocab_.size() + 65536)
    fail("vocabulary ids are not dense: id {} among only {} tokens", max_id, vocab_.size());
  id_to_token_.resize(size_t(max_id + 1));
  for (const auto& [token, id] : vocab_) id_to_token_[size_t(id)] = token;
  for (int b = 0; b < 256; ++b) {
    const int32_t id = token_to_id(byte_level::char_for_byte(static_cast<unsigned char>(b)));
    if (id < 0) fail("vocabulary lacks the byte-level symbol for byte 0x{:02X}; not a byte-level BPE vocabulary", b);
    byte_ids_[b] = id;
  }
  size_t slots = 16;
  merge_shift_ = 60;
  while (slots < merges.size() * 2) {
    slots *= 2;
    --merge_shift_;
  }
  merge_table_.assign(slots, MergeSlot{});
  std::string joined;
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [left, right] = merges[rank];
    joined.assign(left).append(right);
    const int32_t l = token_to_id(left), r = token_to_id(right), m = token_to_id(joined);
    if (l < 0 || r < 0 || m < 0)
      fail("merge {} '{} {}' uses a token missing from the vocabulary ('{}')", rank, left, right,
           l < 0   ? left
           : r < 0 ? right
                   : std::string_view(joined));
    insert_merge(pair_key(l, r), Merge{int32_t(rank), m});
  }
}

void BpeModel::insert_merge(uint64_t key, Merge merge) {
  for (size_t slot = slot_of(key);; slot = (slot + 1) & (merge_table_.size() - 1)) {
    if (merge_table_[slot].key == key) return;  // a repeated pair keeps its first (best) rank, as HF
    if (merge_table_[slot].key == kEmpty) {
      merge_table_[slot] = {key, merge};
      ++merge_count_;
      return;
    }
  }
}

int32_t BpeModel::token_to_id(std::string_view token) const {
  const auto it = vocab_.find(token);
  return it == vocab_.end() ? -1 : it->second;
}

const std::string& BpeModel::id_to_token(int32_t id) const {
  static const std::string empty;
  return id >= 0 && size_t(id) < id_to_token_.size() ? id_to_token_[size_t(id)] : empty;
}

const BpeModel::Merge* BpeModel::find_merge(int32_t left, int32_t right) const {
  const uint64_t key = pair_key(left, right);
  for (size_t slot = slot_of(key);; slot = (slot + 1) & (merge_table_.size() - 1)) {
    const MergeSlot& s = merge_table_[slot];
    if (s.key == key) return &s.merge;
    if (s.key == kEmpty) return nullptr;
  }
}

// Short words (nearly all of them): keep the rank of every adjacent pair, merge the best, and
// look up only the two pairs the merge changed. Linear scans beat a heap on a few symbols.
void BpeModel::merge_small(std::vector<int32_t>& symbols) const {
  thread_local std::vector<Merge> pairs;  // pairs[i]: the merge of symbols[i], symbols[i+1]
  constexpr Merge kNone{INT32_MAX, -1};
  const auto lookup = [&](size_t i) {
    const Merge* m = find_merge(symbols[i], symbols[i + 1]);
    return m != nullptr ? *m : kNone;
  };
  pairs.clear();
  for (size_t i = 0; i + 1 < symbols.size(); ++i) pairs.push_back(lookup(i));
  while (!pairs.empty()) {
    size_t best = 0;
    for (size_t i = 1; i < pairs.size(); ++i)
      if (pairs[i].rank < pairs[best].rank) best = i;
    if (pairs[best].merged_id < 0) return;
    symbols[best] = pairs[best].merged_id;
    symbols.erase(symbols.begin() + long(best) + 1);
    pairs.erase(pairs.begin() + long(best));
    if (best < pairs.size()) pairs[best] = lookup(best);
    if (best > 0) pairs[best - 1] = lookup(best - 1);
  }
}

// Long words (runs of spaces, long identifiers): a doubly linked list of symbols and a heap of
// candidate merges ordered by (rank, position); stale candidates are skipped when popped.
void BpeModel::merge_large(std::vector<int32_t>& symbols) const {
  const size_t n = symbols.size();
  std::vector<int64_t> prev(n), next(n);
  std::vector<bool> alive(n, true);
  for (size_t i = 0; i < n; ++i) {
    prev[i] = int64_t(i) - 1;
    next[i] = i + 1 < n ? int64_t(i + 1) : -1;
  }
  struct Candidate {
    int32_t rank;
    size_t pos;
    int32_t left, right, merged;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  const auto push = [&](size_t pos) {
    if (next[pos] < 0) return;
    const int32_t l = symbols[pos], r = symbols[size_t(next[pos])];
    if (const Merge* merge = find_merge(l, r)) queue.push({merge->rank, pos, l, r, merge->merged_id});
  };
  for (size_t i = 0; i + 1 < n; ++i) push(i);
  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    // Still valid only if both symbols are unchanged since the candidate was pushed.
    if (!alive[c.pos] || next[c.pos] < 0) continue;
    const size_t right = size_t(next[c.pos]);
    if (symbols[c.pos] != c.left || symbols[right] != c.right) continue;
    symbols[c.pos] = c.merged;
    alive[right] = false;
    next[c.pos] = next[right];
    if (next[right] >= 0) prev[size_t(next[right])] = int64_t(c.pos);
    if (prev[c.pos] >= 0) push(size_t(prev[c.pos]));
    push(c.pos);
  }
  size_t out = 0;
  for (int64_t i = 0; i >= 0; i = next[size_t(i)]) symbols[out++] = symbols[size_t(i)];
  symbols.resize(out);
}

bool BpeModel::cached(std::string_view bytes, std::vector<int32_t>& out) const {
  std::lock_guard lock(cache_mutex_);
  const auto it = cache_.find(bytes);
  if (it == cache_.end()) return false;
  out.insert(out.end(), cache_ids_.begin() + it->second.offset,
             cache_ids_.begin() + it->second.offset + it->second.count);
  return true;
}

void BpeModel::remember(std::string_view bytes, const int32_t* ids, size_t count) const {
  std::lock_guard lock(cache_mutex_);
  if (cache_.size() >= kCacheEntries) return;
  if (cache_.try_emplace(std::string(bytes), CachedIds{uint32_t(cache_ids_.size()), uint32_t(count)}).second)
    cache_ids_.insert(cache_ids_.end(), ids, ids + count);
}

void BpeModel::encode_word(std::string_view bytes, std::vector<int32_t>& out) const {
  if (bytes.empty()) return;
  if (ignore_merges_) {
    const int32_t whole = token_to_id(byte_level::encode(bytes));
    if (whole >= 0) {
      out.push_back(whole);
      return;
    }
  }
  const bool cacheable = bytes.size() <= kCacheWordBytes;
  if (cacheable && cached(bytes, out)) return;
  thread_local std::vector<int32_t> symbols;
  symbols.clear();
  for (const char c : bytes) symbols.push_back(byte_ids_[static_cast<unsigned char>(c)]);
  if (symbols.size() <= 48) {
    merge_small(symbols);
  } else {
    merge_large(symbols);
  }
  if (cacheable) remember(bytes, symbols.data(), symbols.size());
  out.insert(out.end(), symbols.begin(), symbols.end());
}

}  // namespace deepmoe
