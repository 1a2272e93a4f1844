#include "train/data_parallel.h"

#include <algorithm>

#include "core/error.h"

namespace deepmoe::train {

namespace {

// Compressed segments of at most 2^28 / ranks elements: a rank may own a whole segment and
// receive it from every rank, so even at 4 bytes an element the all-to-all's byte counts and
// displacements stay within 2^30, inside MPI's int.
size_t compressed_segment(int n_ranks) { return std::max<size_t>(1, (size_t(1) << 28) / size_t(n_ranks)); }

int64_t bytes_but_own(std::span<const int> counts, int rank, int64_t unit) {
  int64_t total = 0;
  for (size_t r = 0; r < counts.size(); ++r)
    if (int(r) != rank) total += int64_t(counts[r]) * unit;
  return total;
}

// In place, by segment: each rank's part of values[begin, end) to every rank (f32 values or bf16
// bits); returns the bytes this rank sent.
template <class T>
int64_t all_gather_segments(const dist::Communicator& comm, const dist::ShardLayout& layout, std::span<T> values,
                            size_t begin, size_t end) {
  if (comm.size() == 1) return 0;
  int64_t sent = 0;
  for (const auto& [b, e] : dist::segments(begin, end)) {
    const std::vector<int> counts = layout.counts_in(b, e);
    comm.allgatherv(values.subspan(b, e - b), counts);
    sent += bytes_but_own(counts, comm.rank(), sizeof(T));
  }
  return sent;
}

}  // namespace

DataParallel::DataParallel(const dist::Communicator& comm, size_t n_params, dist::GradCompression compression)
    : comm_(comm), layout_(n_params, comm.size()), compression_(compression) {
  if (comm_.size() == 1) return;
  shard_grads_.assign(shard().size(), 0.0f);
  if (compression_ != dist::GradCompression::None) residual_.assign(n_params, 0.0f);
}

void DataParallel::reduce_range(std::span<const float> grads, size_t begin, size_t end) {
  if (comm_.size() == 1) return;
  if (grads.size() != layout_.total()) fail("data parallel: {} gradients, expected {}", grads.size(), layout_.total());
  if (compression_ != dist::GradCompression::None) {
    for (const auto& [b, e] : dist::segments(begin, end, compressed_segment(comm_.size()))) start_exchange(grads, b, e);
  } else {
    const dist::Shard mine = shard();
    for (const auto& [b, e] : dist::segments(begin, end)) {
      const std::vector<int> counts = layout_.counts_in(b, e);
      const dist::Shard part = dist::intersect(mine, b, e);
      in_flight_.push_back(comm_.ireduce_scatter_sum(
          grads.subspan(b, e - b), std::span<float>(shard_grads_).subspan(part.begin - mine.begin, part.size()),
          counts));
      bytes_.reduce_scatter += bytes_but_own(counts, comm_.rank(), sizeof(float));
    }
  }
  // MPI moves non-blocking collectives on only inside its calls: each newly finished layer is
  // a chance to move the earlier ones along.
  for (dist::Request& r : in_flight_) r.test();
  for (size_t i = 0; i < n_exchanges_; ++i) exchanges_[i].request.test();
}

void DataParallel::start_exchange(std::span<const float> grads, size_t begin, size_t end) {
  if (n_exchanges_ == exchanges_.size()) exchanges_.emplace_back();
  Exchange& x = exchanges_[n_exchanges_++];
  const int n_ranks = comm_.size();
  const std::vector<int> counts = layout_.counts_in(begin, end);
  if (x.begin != begin || x.end != end || x.send_counts.empty()) {  // the first step: size the payloads
    x.begin = begin;
    x.end = end;
    x.send_counts.resize(size_t(n_ranks));
    x.recv_counts.resize(size_t(n_ranks));
    size_t send_total = 0;
    for (int r = 0; r < n_ranks; ++r) {
      x.send_counts[size_t(r)] = int(dist::encoded_bytes(compression_, size_t(counts[size_t(r)])));
      x.recv_counts[size_t(r)] = int(dist::encoded_bytes(compression_, size_t(counts[size_t(comm_.rank())])));
      send_total += size_t(x.send_counts[size_t(r)]);
    }
    x.send.resize(send_total);
    x.recv.resize(size_t(x.recv_counts[0]) * size_t(n_ranks));
  }
  // Each rank's piece of the range, encoded on its own (int8 blocks start at the piece).
  size_t element = begin, byte = 0;
  for (int r = 0; r < n_ranks; ++r) {
    const size_t n = size_t(counts[size_t(r)]), n_bytes = size_t(x.send_counts[size_t(r)]);
    dist::encode_with_feedback(compression_, grads.subspan(element, n), std::span<float>(residual_).subspan(element, n),
                               std::span<std::byte>(x.send).subspan(byte, n_bytes));
    element += n;
    byte += n_bytes;
  }
  x.request = comm_.ialltoallv_bytes(x.send, x.send_counts, x.recv, x.recv_counts);
  bytes_.reduce_scatter += bytes_but_own(x.send_counts, comm_.rank(), 1);
}

std::span<float> DataParallel::finish(std::span<float> grads) {
  if (comm_.size() == 1) return grads.subspan(shard().begin, shard().size());
  for (dist::Request& r : in_flight_) r.wait();
  in_flight_.clear();
  if (n_exchanges_ == 0) return shard_grads_;
  // Compressed: every rank's payload for this rank's piece, decoded and added in rank order.
  std::fill(shard_grads_.begin(), shard_grads_.end(), 0.0f);
  const dist::Shard mine = shard();
  for (size_t i = 0; i < n_exchanges_; ++i) {
    Exchange& x = exchanges_[i];
    x.request.wait();
    const dist::Shard part = dist::intersect(mine, x.begin, x.end);
    const std::span<float> sum = std::span<float>(shard_grads_).subspan(part.begin - mine.begin, part.size());
    const size_t n_bytes = size_t(x.recv_counts[0]);
    for (int r = 0; r < comm_.size(); ++r)
      dist::decode_add(compression_, std::span<const std::byte>(x.recv).subspan(size_t(r) * n_bytes, n_bytes), sum);
  }
  n_exchanges_ = 0;
  return shard_grads_;
}

void DataParallel::all_gather(std::span<float> values) { all_gather(values, 0, layout_.total()); }

void DataParallel::all_gather(std::span<float> values, size_t begin, size_t end) {
  bytes_.all_gather += all_gather_segments(comm_, layout_, values, begin, end);
}

void DataParallel::all_gather(std::span<uint16_t> bf16_bits) {
  bytes_.all_gather += all_gather_segments(comm_, layout_, bf16_bits, 0, layout_.total());
}

void DataParallel::gather_range_to_root(std::span<const float> values, size_t begin, size_t end,
                                        std::span<float> whole) const {
  const dist::Shard mine = shard();
  for (const auto& [b, e] : dist::segments(begin, end)) {
    const dist::Shard part = dist::intersect(mine, b, e);
    comm_.gatherv(values.subspan(part.begin, part.size()),
                  comm_.is_root() ? whole.subspan(b - begin, e - b) : std::span<float>(), layout_.counts_in(b, e), 0);
  }
}

void DataParallel::restore_residual(std::span<const float> saved) {
  if (saved.size() != residual_.size())
    fail("data parallel: a residual of {} for one of {}", saved.size(), residual_.size());
  std::copy(saved.begin(), saved.end(), residual_.begin());
}

size_t DataParallel::buffer_floats() const {
  size_t bytes = 0;
  for (const Exchange& x : exchanges_) bytes += x.send.size() + x.recv.size();
  return shard_grads_.size() + residual_.size() + bytes / sizeof(float);
}

CommBytes DataParallel::take_bytes() {
  const CommBytes taken = bytes_;
  bytes_ = CommBytes();
  return taken;
}

}  // namespace deepmoe::train
