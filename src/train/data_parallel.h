// Data parallelism with ZeRO-1 over the flat parameter buffer. Every rank holds all the weights
// and computes gradients on its share of the batch; the gradients are summed by reduce-scatter so
// that each rank receives only its own shard of them (dist::ShardLayout), updates its shard's
// optimizer state and weights, and the weights are all-gathered back. The reduction of a range
// starts as soon as backward has finished it (TrainGraph's GradientsReady), non-blocking, and is
// moved on by polling each time the next range is ready; finish() waits for the rest.
//
// With gradient compression (bf16 or int8, dist/grad_codec.h) a range is not reduce-scattered by
// MPI: each rank encodes every other rank's piece of it (its gradient plus its error-feedback
// residual), the payloads are exchanged with one all-to-all, and each owner decodes the ranks'
// payloads and adds them in f32 in rank order. MPI's reductions cannot add bf16 or block-scaled
// int8 themselves, and an all-to-all moves each rank's payload once, as a reduce-scatter would.
//
// One rank: nothing moves (nothing is compressed either), and the shard's gradients are the
// gradient buffer itself.
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "dist/communicator.h"
#include "dist/grad_codec.h"
#include "dist/shards.h"

namespace deepmoe::train {

// Bytes that left this rank, by collective, as the bandwidth-optimal algorithms move them: a
// reduce-scatter sends every piece of the range but its own (4 bytes an element, or the piece's
// encoding), an all-gather every shard but its own (a ring passes them on), an all-to-all (expert
// parallelism's token dispatch and return) every row that goes to another rank.
struct CommBytes {
  int64_t reduce_scatter = 0, all_gather = 0, all_to_all = 0;
  CommBytes& operator+=(const CommBytes& o) {
    reduce_scatter += o.reduce_scatter;
    all_gather += o.all_gather;
    all_to_all += o.all_to_all;
    return *this;
  }
};

class DataParallel {
 public:
  // n_params: the flat buffer's length. Allocates this rank's shard of gradients and, with
  // compression on more than one rank, the residual of the whole buffer.
  DataParallel(const dist::Communicator& comm, size_t n_params,
               dist::GradCompression compression = dist::GradCompression::None);
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  const dist::Communicator& comm() const { return comm_; }
  const dist::ShardLayout& layout() const { return layout_; }
  const dist::Shard& shard() const { return layout_.shard(comm_.rank()); }
  dist::GradCompression compression() const { return compression_; }

  // Starts summing grads[begin, end) over the ranks into this rank's shard (each rank calls it
  // for the same ranges in the same order), and polls the reductions in flight. grads[begin, end)
  // must stay unchanged until finish(). Compressed, it encodes the range first (its buffers are
  // allocated on the first step and reused, since every step reports the same ranges).
  void reduce_range(std::span<const float> grads, size_t begin, size_t end);
  // Waits for every reduction started and returns this rank's shard of the summed gradients
  // (element i: parameter shard().begin + i); one rank: grads' shard itself, as it is.
  std::span<float> finish(std::span<float> grads);
  // In place: every rank's shard of `values` to every rank; or only the elements of [begin, end)
  // (each rank's part of it); or, for the bf16 copy of the weights, the shards' bf16 bits.
  void all_gather(std::span<float> values);
  void all_gather(std::span<float> values, size_t begin, size_t end);
  void all_gather(std::span<uint16_t> bf16_bits);
  // values[begin, end) onto rank 0 into `whole` (end - begin elements; ignored elsewhere), each
  // rank sending the part of it in its shard.
  void gather_range_to_root(std::span<const float> values, size_t begin, size_t end, std::span<float> whole) const;

  // The bytes sent since the last call (the checkpoint gathers are not counted), and zero again.
  CommBytes take_bytes();
  // Floats this rank holds for the reduction: its gradient shard, the residual, the payloads.
  size_t buffer_floats() const;
  // The error-feedback residual (empty when nothing is compressed): what this rank still owes.
  std::span<const float> residual() const { return residual_; }
  // A residual saved by this rank of an identical world (a checkpoint), instead of the current one.
  void restore_residual(std::span<const float> saved);

 private:
  // One segment of a compressed range: its payloads, kept from step to step.
  struct Exchange {
    size_t begin = 0, end = 0;
    std::vector<int> send_counts, recv_counts;  // bytes, per rank
    std::vector<std::byte> send, recv;
    dist::Request request;
  };
  void start_exchange(std::span<const float> grads, size_t begin, size_t end);

  const dist::Communicator& comm_;
  dist::ShardLayout layout_;
  dist::GradCompression compression_;
  std::vector<float> shard_grads_;
  std::vector<dist::Request> in_flight_;
  std::vector<float> residual_;
  std::vector<Exchange> exchanges_;  // the step's first n_exchanges_ are in use
  size_t n_exchanges_ = 0;
  CommBytes bytes_;
};

}  // namespace deepmoe::train
