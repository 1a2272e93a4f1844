#include "train/data_parallel.h"

#include <algorithm>

#include "core/error.h"

namespace deepmoe::train {

DataParallel::DataParallel(const dist::Communicator& comm, size_t n_params)
    : comm_(comm), layout_(n_params, comm.size()) {
  if (comm_.size() > 1) shard_grads_.assign(shard().size(), 0.0f);
}

void DataParallel::reduce_range(std::span<const float> grads, size_t begin, size_t end) {
  if (comm_.size() == 1) return;
  if (grads.size() != layout_.total()) fail("data parallel: {} gradients, expected {}", grads.size(), layout_.total());
  const dist::Shard mine = shard();
  for (const auto& [b, e] : dist::segments(begin, end)) {
    const std::vector<int> counts = layout_.counts_in(b, e);
    const dist::Shard part = dist::intersect(mine, b, e);
    in_flight_.push_back(comm_.ireduce_scatter_sum(
        grads.subspan(b, e - b), std::span<float>(shard_grads_).subspan(part.begin - mine.begin, part.size()), counts));
  }
  // MPI moves non-blocking collectives on only inside its calls: each newly finished layer is
  // a chance to move the earlier ones along.
  for (dist::Request& r : in_flight_) r.test();
}

std::span<float> DataParallel::finish(std::span<float> grads) {
  if (comm_.size() == 1) return grads.subspan(shard().begin, shard().size());
  for (dist::Request& r : in_flight_) r.wait();
  in_flight_.clear();
  return shard_grads_;
}

void DataParallel::all_gather(std::span<float> values) const {
  if (comm_.size() == 1) return;
  for (const auto& [b, e] : dist::segments(0, layout_.total()))
    comm_.allgatherv(values.subspan(b, e - b), layout_.counts_in(b, e));
}

void DataParallel::gather_to_root(std::span<const float> shard_values, std::span<float> whole) const {
  const dist::Shard mine = shard();
  if (shard_values.size() != mine.size())
    fail("data parallel: {} values for a shard of {}", shard_values.size(), mine.size());
  for (const auto& [b, e] : dist::segments(0, layout_.total())) {
    const dist::Shard part = dist::intersect(mine, b, e);
    comm_.gatherv(shard_values.subspan(part.begin - mine.begin, part.size()),
                  comm_.is_root() ? whole.subspan(b, e - b) : std::span<float>(), layout_.counts_in(b, e), 0);
  }
}

}  // namespace deepmoe::train
