// A group of ranks and the collectives training needs, over Open MPI, or over nothing for a
// process that runs alone (a solo communicator of one rank, whose collectives are copies, so the
// same code trains with and without mpirun). MPI's own headers stay in communicator.cpp.
//
// Every MPI error becomes an Error naming the call and MPI's reason (the communicators return
// errors instead of aborting). Collectives must be called by every rank of the communicator in
// the same order, as MPI requires.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace deepmoe::dist {

// A non-blocking collective in flight. Its buffers must stay untouched until it completes; a
// Request destroyed while in flight waits for it first (MPI frees nothing still in use), except
// while an exception unwinds: then the job is ending, and waiting might never return.
class Request {
 public:
  Request();  // already complete
  ~Request();
  Request(Request&&) noexcept;
  Request& operator=(Request&&) noexcept;
  Request(const Request&) = delete;
  Request& operator=(const Request&) = delete;

  // Lets MPI progress it (MPI moves non-blocking collectives on only inside its calls); true
  // once it is complete.
  bool test();
  void wait();
  struct Impl;

 private:
  friend class Communicator;
  explicit Request(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class Communicator {
 public:
  // One rank, no MPI: for a process not started by mpirun.
  static Communicator solo();
  ~Communicator();
  Communicator(Communicator&&) noexcept;
  Communicator& operator=(Communicator&&) noexcept;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  bool is_root() const { return rank_ == 0; }
  // The host this rank runs on (MPI's processor name; the machine's name when solo).
  std::string host() const;

  // The ranks that pass the same color, ordered by key (MPI_Comm_split), as a communicator of
  // their own: the groups expert parallelism works within. Collective over this communicator.
  Communicator split(int color, int key) const;

  void barrier() const;

  // Sums `values` over the ranks, in place. Every rank gathers every rank's values and adds
  // them in rank order, so all ranks hold the same bits and a run reproduces itself: for the
  // few numbers every rank must decide on alike (the loss, the gradient norm, expert loads).
  void allreduce_sum(std::span<double> values) const;
  void allreduce_sum(std::span<int64_t> values) const;
  // The largest of each value over the ranks, in place (order does not matter for a max).
  void allreduce_max(std::span<double> values) const;
  // Each rank's list of strings (e.g. host names), in rank order.
  std::vector<std::string> allgather(const std::string& value) const;

  // Non-blocking reduce-scatter of f32 sums: `send` is the same range on every rank, cut in rank
  // order into counts[r] elements each; this rank receives the sum over ranks of its piece
  // (counts[rank()] elements) in `recv`. Solo: a copy.
  Request ireduce_scatter_sum(std::span<const float> send, std::span<float> recv, std::span<const int> counts) const;
  // Non-blocking all-to-all of bytes: send_counts[r] bytes of `send` (pieces in rank order) go to
  // rank r, and recv_counts[r] bytes from rank r land in `recv` (pieces in rank order). The
  // compressed gradient reduction's transport. Solo: a copy.
  Request ialltoallv_bytes(std::span<const std::byte> send, std::span<const int> send_counts, std::span<std::byte> recv,
                           std::span<const int> recv_counts) const;
  // In place: rank r's counts[r] elements at its offset in `buffer` (the pieces lie in rank
  // order) go to every rank's buffer. Solo: nothing to move.
  void allgatherv(std::span<float> buffer, std::span<const int> counts) const;
  void allgatherv(std::span<uint16_t> buffer, std::span<const int> counts) const;  // bf16 bits
  // Every rank's `send` (counts[rank()] elements) into `recv` on rank `root`, in rank order
  // (recv is ignored elsewhere). Solo: a copy.
  void gatherv(std::span<const float> send, std::span<float> recv, std::span<const int> counts, int root) const;

  struct Impl;

 private:
  Communicator(std::unique_ptr<Impl> impl, int rank, int size);
  friend class World;
  std::unique_ptr<Impl> impl_;  // null when solo
  int rank_ = 0, size_ = 1;
};

}  // namespace deepmoe::dist
