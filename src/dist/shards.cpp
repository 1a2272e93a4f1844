#include "dist/shards.h"

#include <algorithm>
#include <climits>

#include "core/error.h"

namespace deepmoe::dist {

Shard intersect(Shard shard, size_t begin, size_t end) {
  const size_t lo = std::clamp(begin, shard.begin, shard.end), hi = std::clamp(end, shard.begin, shard.end);
  return {lo, std::max(lo, hi)};
}

ShardLayout::ShardLayout(size_t total, int n_ranks, size_t align) : total_(total) {
  if (n_ranks < 1) fail("a shard layout needs at least one rank, found {}", n_ranks);
  if (align < 1) fail("shard alignment must be at least 1 element");
  // ceil(total / n_ranks) rounded up to the alignment.
  const size_t per_rank = (total / size_t(n_ranks) + (total % size_t(n_ranks) != 0) + align - 1) / align * align;
  for (int r = 0; r < n_ranks; ++r) {
    const size_t begin = std::min(total, per_rank * size_t(r));
    shards_.push_back({begin, std::min(total, begin + per_rank)});
  }
}

std::vector<int> ShardLayout::counts_in(size_t begin, size_t end) const {
  if (begin > end || end > total_) fail("range [{}, {}) is outside the buffer of {} elements", begin, end, total_);
  std::vector<int> counts;
  for (const Shard& s : shards_) {
    const size_t n = intersect(s, begin, end).size();
    if (n > size_t(INT_MAX)) fail("range [{}, {}): {} elements for one rank exceed an MPI count", begin, end, n);
    counts.push_back(int(n));
  }
  return counts;
}

std::vector<std::pair<size_t, size_t>> segments(size_t begin, size_t end, size_t max_length) {
  std::vector<std::pair<size_t, size_t>> pieces;
  for (size_t b = begin; b < end; b += max_length) pieces.emplace_back(b, std::min(end, b + max_length));
  return pieces;
}

}  // namespace deepmoe::dist
