// The expert-parallel group of model/expert_group.h over an MPI communicator: the E ranks whose
// routed experts together make a layer's (ranks r·E .. r·E + E - 1 of the world). Each exchange is
// one blocking MPI all-to-all (the forward and backward passes need its rows before going on);
// it counts the bytes it sends and the seconds it waits, for the step's report.
#pragma once
#include <cstdint>

#include "dist/communicator.h"
#include "model/expert_group.h"

namespace deepmoe::train {

class ExpertExchange final : public ExpertGroup {
 public:
  explicit ExpertExchange(const dist::Communicator& comm) : comm_(comm) {}

  int size() const override { return comm_.size(); }
  int rank() const override { return comm_.rank(); }
  void exchange_counts(std::span<const int32_t> send, std::span<int32_t> recv, int64_t n) override;
  void exchange_rows(const float* send, std::span<const int64_t> send_rows, float* recv,
                     std::span<const int64_t> recv_rows, int64_t width) override;

  // Bytes sent to other ranks and seconds spent in the exchanges since the last call, and zero again.
  int64_t take_bytes();
  double take_seconds();

 private:
  const dist::Communicator& comm_;
  int64_t bytes_ = 0;
  double seconds_ = 0;
};

}  // namespace deepmoe::train
