// The flat parameter buffer cut into one contiguous shard per rank (ZeRO's partition), and the
// arithmetic collectives over a range of that buffer need: which part of a range each rank owns,
// and a range cut into segments whose counts fit MPI's int.
#pragma once
#include <cstddef>
#include <span>
#include <utility>
#include <vector>

namespace deepmoe::dist {

// Elements [begin, end) of the flat buffer.
struct Shard {
  size_t begin = 0, end = 0;
  size_t size() const { return end - begin; }
  bool operator==(const Shard&) const = default;
};

// The part of [begin, end) inside `shard` (empty, at the nearer edge, when they do not meet).
Shard intersect(Shard shard, size_t begin, size_t end);

class ShardLayout {
 public:
  // n_ranks shards covering [0, total) in rank order. Every boundary but the last is a multiple
  // of `align` elements (64-byte cache lines for f32 by default), so each rank's optimizer pass
  // starts on a line of its own; the last ranks may own fewer elements, or none when total is small.
  ShardLayout(size_t total, int n_ranks, size_t align = 16);

  size_t total() const { return total_; }
  int ranks() const { return int(shards_.size()); }
  const Shard& shard(int rank) const { return shards_[size_t(rank)]; }
  // How many elements of [begin, end) each rank owns, in rank order. Throws Error when one does
  // not fit an int (cut the range with segments() first).
  std::vector<int> counts_in(size_t begin, size_t end) const;

 private:
  size_t total_;
  std::vector<Shard> shards_;
};

// [begin, end) cut into consecutive pieces of at most max_length elements: one collective each,
// so per-rank counts and displacements stay within MPI's int even for a layer of billions.
std::vector<std::pair<size_t, size_t>> segments(size_t begin, size_t end, size_t max_length = size_t(1) << 30);

}  // namespace deepmoe::dist
