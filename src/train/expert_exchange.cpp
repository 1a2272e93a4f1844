#include "train/expert_exchange.h"

#include <chrono>
#include <climits>
#include <vector>

#include "core/error.h"

namespace deepmoe::train {

namespace {

// Byte counts per rank for MPI, which counts in int.
std::vector<int> byte_counts(std::span<const int64_t> rows, int64_t row_bytes) {
  std::vector<int> counts;
  int64_t total = 0;
  for (const int64_t r : rows) {
    total += r * row_bytes;
    if (total > INT_MAX) fail("expert parallel: an all-to-all of {} bytes exceeds MPI's int counts", total);
    counts.push_back(int(r * row_bytes));
  }
  return counts;
}

}  // namespace

void ExpertExchange::exchange_counts(std::span<const int32_t> send, std::span<int32_t> recv, int64_t n) {
  const std::vector<int64_t> each(size_t(comm_.size()), n);
  const std::vector<int> counts = byte_counts(each, sizeof(int32_t));
  const auto start = std::chrono::steady_clock::now();
  comm_.ialltoallv_bytes(std::as_bytes(send), counts, std::as_writable_bytes(recv), counts).wait();
  seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  bytes_ += int64_t(comm_.size() - 1) * n * int64_t(sizeof(int32_t));
}

void ExpertExchange::exchange_rows(const float* send, std::span<const int64_t> send_rows, float* recv,
                                   std::span<const int64_t> recv_rows, int64_t width) {
  const int64_t row_bytes = width * int64_t(sizeof(float));
  const std::vector<int> send_counts = byte_counts(send_rows, row_bytes),
                         recv_counts = byte_counts(recv_rows, row_bytes);
  int64_t send_total = 0, recv_total = 0;
  for (const int c : send_counts) send_total += c;
  for (const int c : recv_counts) recv_total += c;
  const auto start = std::chrono::steady_clock::now();
  comm_
      .ialltoallv_bytes(std::span(reinterpret_cast<const std::byte*>(send), size_t(send_total)), send_counts,
                        std::span(reinterpret_cast<std::byte*>(recv), size_t(recv_total)), recv_counts)
      .wait();
  seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  bytes_ += send_total - send_counts[size_t(comm_.rank())];
}

int64_t ExpertExchange::take_bytes() {
  const int64_t taken = bytes_;
  bytes_ = 0;
  return taken;
}

double ExpertExchange::take_seconds() {
  const double taken = seconds_;
  seconds_ = 0;
  return taken;
}

}  // namespace deepmoe::train
