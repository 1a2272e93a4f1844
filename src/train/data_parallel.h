// Data parallelism with ZeRO-1 over the flat parameter buffer. Every rank holds all the weights
// and computes gradients on its share of the batch; the gradients are summed by reduce-scatter so
// that each rank receives only its own shard of them (dist::ShardLayout), updates its shard's
// optimizer state and weights, and the weights are all-gathered back. The reduction of a range
// starts as soon as backward has finished it (TrainGraph's GradientsReady), non-blocking, and is
// moved on by polling each time the next range is ready; finish() waits for the rest.
//
// One rank: nothing moves, and the shard's gradients are the gradient buffer itself.
#pragma once
#include <span>
#include <vector>

#include "dist/communicator.h"
#include "dist/shards.h"

namespace deepmoe::train {

class DataParallel {
 public:
  // n_params: the flat buffer's length. Allocates this rank's shard of gradients.
  DataParallel(const dist::Communicator& comm, size_t n_params);
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  const dist::Communicator& comm() const { return comm_; }
  const dist::ShardLayout& layout() const { return layout_; }
  const dist::Shard& shard() const { return layout_.shard(comm_.rank()); }

  // Starts summing grads[begin, end) over the ranks into this rank's shard (each rank calls it
  // for the same ranges in the same order), and polls the reductions in flight. grads[begin, end)
  // must stay unchanged until finish().
  void reduce_range(std::span<const float> grads, size_t begin, size_t end);
  // Waits for every reduction started and returns this rank's shard of the summed gradients
  // (element i: parameter shard().begin + i); one rank: grads' shard itself, as it is.
  std::span<float> finish(std::span<float> grads);
  // In place: every rank's shard of `values` to every rank.
  void all_gather(std::span<float> values) const;
  // Every rank's `shard_values` (this rank's shard of some buffer) into `whole` on rank 0 (whole
  // is ignored elsewhere).
  void gather_to_root(std::span<const float> shard_values, std::span<float> whole) const;

 private:
  const dist::Communicator& comm_;
  dist::ShardLayout layout_;
  std::vector<float> shard_grads_;
  std::vector<dist::Request> in_flight_;
};

}  // namespace deepmoe::train
