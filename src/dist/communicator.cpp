#include "dist/communicator.h"

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <exception>

#include "core/error.h"
#include "dist/mpi_handles.h"

namespace deepmoe::dist {

void check_mpi(int code, const char* call) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) std::snprintf(text, sizeof text, "MPI error %d", code);
  fail("{}: {}", call, text);
}

Communicator::Impl::~Impl() {
  if (owned && comm != MPI_COMM_NULL) MPI_Comm_free(&comm);
}

// Request

Request::Request() = default;
Request::Request(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Request::Request(Request&&) noexcept = default;
Request& Request::operator=(Request&& other) noexcept {
  if (this != &other) {
    if (impl_ && impl_->request != MPI_REQUEST_NULL) MPI_Wait(&impl_->request, MPI_STATUS_IGNORE);
    impl_ = std::move(other.impl_);
  }
  return *this;
}

Request::~Request() {
  // Unwinding from an error, the other ranks may never join this collective: waiting could hang
  // the rank that has the error to report, and the job is about to end (World::abort_job). MPI
  // allows neither freeing nor cancelling a collective's request, so it is left as it is.
  if (std::uncaught_exceptions() > 0) return;
  // No exception from a destructor: an error here already failed the step that owned it.
  if (impl_ && impl_->request != MPI_REQUEST_NULL) MPI_Wait(&impl_->request, MPI_STATUS_IGNORE);
}

bool Request::test() {
  if (!impl_ || impl_->request == MPI_REQUEST_NULL) return true;
  int done = 0;
  check_mpi(MPI_Test(&impl_->request, &done, MPI_STATUS_IGNORE), impl_->call);
  return done != 0;
}

void Request::wait() {
  if (!impl_ || impl_->request == MPI_REQUEST_NULL) return;
  check_mpi(MPI_Wait(&impl_->request, MPI_STATUS_IGNORE), impl_->call);
}

// Communicator

namespace {

void check_counts(std::span<const int> counts, int size, const char* call) {
  if (int(counts.size()) != size) fail("{}: {} counts for {} ranks", call, counts.size(), size);
  for (const int c : counts)
    if (c < 0) fail("{}: a negative count ({})", call, c);
}

std::vector<int> displacements_of(std::span<const int> counts) {
  std::vector<int> displacements(counts.size());
  int64_t offset = 0;
  for (size_t r = 0; r < counts.size(); ++r) {
    if (offset > INT32_MAX) fail("collective: displacement {} exceeds an MPI int", offset);
    displacements[r] = int(offset);
    offset += counts[r];
  }
  return displacements;
}

int64_t sum_of(std::span<const int> counts) {
  int64_t total = 0;
  for (const int c : counts) total += c;
  return total;
}

// values[i] = Σ over ranks, added in rank order from every rank's copy: the same bits everywhere.
template <typename T>
void ordered_sum(MPI_Comm comm, int size, MPI_Datatype type, std::span<T> values) {
  if (values.empty()) return;
  std::vector<T> all(values.size() * size_t(size));
  check_mpi(MPI_Allgather(values.data(), int(values.size()), type, all.data(), int(values.size()), type, comm),
            "MPI_Allgather (allreduce_sum)");
  for (size_t i = 0; i < values.size(); ++i) {
    T sum = all[i];
    for (int r = 1; r < size; ++r) sum += all[size_t(r) * values.size() + i];
    values[i] = sum;
  }
}

}  // namespace

Communicator::Communicator(std::unique_ptr<Impl> impl, int rank, int size)
    : impl_(std::move(impl)), rank_(rank), size_(size) {}
Communicator::~Communicator() = default;
Communicator::Communicator(Communicator&&) noexcept = default;
Communicator& Communicator::operator=(Communicator&&) noexcept = default;

Communicator Communicator::solo() { return Communicator(nullptr, 0, 1); }

std::string Communicator::host() const {
  if (!impl_) {
    char name[256] = {};
    if (::gethostname(name, sizeof name - 1) != 0) return "localhost";
    return name;
  }
  char name[MPI_MAX_PROCESSOR_NAME] = {};
  int length = 0;
  check_mpi(MPI_Get_processor_name(name, &length), "MPI_Get_processor_name");
  return std::string(name, size_t(length));
}

Communicator Communicator::split(int color, int key) const {
  if (color < 0) fail("split: color must be >= 0, found {}", color);
  if (!impl_) return solo();
  auto impl = std::make_unique<Impl>();
  check_mpi(MPI_Comm_split(impl_->comm, color, key, &impl->comm), "MPI_Comm_split");
  impl->owned = true;
  int rank = 0, size = 0;
  check_mpi(MPI_Comm_rank(impl->comm, &rank), "MPI_Comm_rank");
  check_mpi(MPI_Comm_size(impl->comm, &size), "MPI_Comm_size");
  return Communicator(std::move(impl), rank, size);
}

void Communicator::barrier() const {
  if (impl_) check_mpi(MPI_Barrier(impl_->comm), "MPI_Barrier");
}

void Communicator::allreduce_sum(std::span<double> values) const {
  if (impl_ && size_ > 1) ordered_sum(impl_->comm, size_, MPI_DOUBLE, values);
}

void Communicator::allreduce_sum(std::span<int64_t> values) const {
  if (impl_ && size_ > 1) ordered_sum(impl_->comm, size_, MPI_INT64_T, values);
}

void Communicator::allreduce_max(std::span<double> values) const {
  if (impl_ && size_ > 1 && !values.empty())
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, values.data(), int(values.size()), MPI_DOUBLE, MPI_MAX, impl_->comm),
              "MPI_Allreduce (allreduce_max)");
}

std::vector<std::string> Communicator::allgather(const std::string& value) const {
  if (!impl_ || size_ == 1) return {value};
  int length = int(value.size());
  std::vector<int> lengths(static_cast<size_t>(size_));
  check_mpi(MPI_Allgather(&length, 1, MPI_INT, lengths.data(), 1, MPI_INT, impl_->comm), "MPI_Allgather (lengths)");
  const std::vector<int> displacements = displacements_of(lengths);
  std::vector<char> all(size_t(sum_of(lengths)));
  check_mpi(MPI_Allgatherv(value.data(), length, MPI_CHAR, all.data(), lengths.data(), displacements.data(), MPI_CHAR,
                           impl_->comm),
            "MPI_Allgatherv (strings)");
  std::vector<std::string> out;
  for (int r = 0; r < size_; ++r) out.emplace_back(all.data() + displacements[size_t(r)], size_t(lengths[size_t(r)]));
  return out;
}

Request Communicator::ireduce_scatter_sum(std::span<const float> send, std::span<float> recv,
                                          std::span<const int> counts) const {
  constexpr const char* kCall = "MPI_Ireduce_scatter";
  check_counts(counts, size_, kCall);
  if (int64_t(send.size()) != sum_of(counts) || int64_t(recv.size()) != counts[size_t(rank_)])
    fail("{}: {} elements to send and {} to receive do not match the counts", kCall, send.size(), recv.size());
  if (!impl_) {
    std::copy(send.begin(), send.end(), recv.begin());
    return Request();
  }
  auto impl = std::make_unique<Request::Impl>();
  impl->call = kCall;
  impl->counts.assign(counts.begin(), counts.end());
  // MPI wants a receive address even for 0 elements; any valid one does.
  float dummy = 0;
  float* out = recv.empty() ? &dummy : recv.data();
  check_mpi(MPI_Ireduce_scatter(send.data(), out, impl->counts.data(), MPI_FLOAT, MPI_SUM, impl_->comm, &impl->request),
            kCall);
  return Request(std::move(impl));
}

Request Communicator::ialltoallv_bytes(std::span<const std::byte> send, std::span<const int> send_counts,
                                       std::span<std::byte> recv, std::span<const int> recv_counts) const {
  constexpr const char* kCall = "MPI_Ialltoallv";
  check_counts(send_counts, size_, kCall);
  check_counts(recv_counts, size_, kCall);
  if (int64_t(send.size()) != sum_of(send_counts) || int64_t(recv.size()) != sum_of(recv_counts))
    fail("{}: {} bytes to send and {} to receive do not match the counts", kCall, send.size(), recv.size());
  if (!impl_) {
    std::copy(send.begin(), send.end(), recv.begin());
    return Request();
  }
  auto impl = std::make_unique<Request::Impl>();
  impl->call = kCall;
  impl->counts.assign(send_counts.begin(), send_counts.end());
  impl->displacements = displacements_of(send_counts);
  impl->recv_counts.assign(recv_counts.begin(), recv_counts.end());
  impl->recv_displacements = displacements_of(recv_counts);
  // MPI wants valid addresses even for 0 bytes.
  std::byte dummy[1] = {};
  const std::byte* in = send.empty() ? dummy : send.data();
  std::byte* out = recv.empty() ? dummy : recv.data();
  check_mpi(MPI_Ialltoallv(in, impl->counts.data(), impl->displacements.data(), MPI_BYTE, out, impl->recv_counts.data(),
                           impl->recv_displacements.data(), MPI_BYTE, impl_->comm, &impl->request),
            kCall);
  return Request(std::move(impl));
}

namespace {

template <class T>
void allgatherv_in_place(MPI_Comm comm, std::span<T> buffer, std::span<const int> counts, int size, MPI_Datatype type) {
  constexpr const char* kCall = "MPI_Allgatherv";
  check_counts(counts, size, kCall);
  if (int64_t(buffer.size()) != sum_of(counts))
    fail("{}: a buffer of {} elements for counts summing to {}", kCall, buffer.size(), sum_of(counts));
  if (comm == MPI_COMM_NULL) return;
  const std::vector<int> displacements = displacements_of(counts);
  check_mpi(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buffer.data(), counts.data(), displacements.data(), type,
                           comm),
            kCall);
}

}  // namespace

void Communicator::allgatherv(std::span<float> buffer, std::span<const int> counts) const {
  allgatherv_in_place(impl_ ? impl_->comm : MPI_COMM_NULL, buffer, counts, size_, MPI_FLOAT);
}

void Communicator::allgatherv(std::span<uint16_t> buffer, std::span<const int> counts) const {
  allgatherv_in_place(impl_ ? impl_->comm : MPI_COMM_NULL, buffer, counts, size_, MPI_UINT16_T);
}

void Communicator::gatherv(std::span<const float> send, std::span<float> recv, std::span<const int> counts,
                           int root) const {
  constexpr const char* kCall = "MPI_Gatherv";
  check_counts(counts, size_, kCall);
  if (root < 0 || root >= size_) fail("{}: root {} outside the {} ranks", kCall, root, size_);
  if (int64_t(send.size()) != counts[size_t(rank_)])
    fail("{}: {} elements to send, the counts say {}", kCall, send.size(), counts[size_t(rank_)]);
  if (rank_ == root && int64_t(recv.size()) != sum_of(counts))
    fail("{}: a receive buffer of {} elements for counts summing to {}", kCall, recv.size(), sum_of(counts));
  if (!impl_) {
    std::copy(send.begin(), send.end(), recv.begin());
    return;
  }
  const std::vector<int> displacements = displacements_of(counts);
  float dummy = 0;
  check_mpi(MPI_Gatherv(send.empty() ? &dummy : send.data(), int(send.size()), MPI_FLOAT,
                        rank_ == root ? recv.data() : nullptr, counts.data(), displacements.data(), MPI_FLOAT, root,
                        impl_->comm),
            kCall);
}

}  // namespace deepmoe::dist
