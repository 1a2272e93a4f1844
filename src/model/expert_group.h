// The ranks an MoE layer's routed experts are spread over (expert parallelism): rank r of size()
// holds experts [r·m, (r+1)·m), m = n_routed_experts / size(), and every rank routes its own
// tokens. The model only moves rows through this interface; train/ implements it over MPI, so
// the model layer knows nothing of MPI. Every call is collective over the group: each rank calls
// it in the same order.
#pragma once
#include <cstdint>
#include <span>

namespace deepmoe {

class ExpertGroup {
 public:
  virtual ~ExpertGroup() = default;
  virtual int size() const = 0;
  virtual int rank() const = 0;

  // All-to-all of counts, n per rank: send[r·n, (r+1)·n) go to rank r, and recv[r·n, (r+1)·n)
  // come from rank r.
  virtual void exchange_counts(std::span<const int32_t> send, std::span<int32_t> recv, int64_t n) = 0;
  // All-to-all of rows of `width` floats: send_rows[r] consecutive rows of `send` (the ranks in
  // order) go to rank r; recv_rows[r] rows from rank r land in `recv`, the ranks in order.
  virtual void exchange_rows(const float* send, std::span<const int64_t> send_rows, float* recv,
                             std::span<const int64_t> recv_rows, int64_t width) = 0;
};

}  // namespace deepmoe
