// The communicator and DataParallel over real MPI ranks: ctest runs this file's test under
// `mpirun -np 3` (tests/CMakeLists.txt); alone (the ordinary unit-test run) it is skipped. Uneven
// counts with empty pieces, sums in rank order that every rank holds bit for bit, sub-groups, and
// a layer-by-layer reduce-scatter into shards followed by an all-gather, plain and compressed.
#include <gtest/gtest.h>

#include <numeric>

#include "dist/grad_codec.h"
#include "dist/world.h"
#include "train/data_parallel.h"

namespace deepmoe::dist {
namespace {

TEST(MpiCommunicatorTest, CollectivesAcrossRanks) {
  if (!World::launched_by_mpirun()) GTEST_SKIP() << "run by ctest under mpirun";
  World world;  // one per process: the only test here that makes one
  const Communicator& comm = world.communicator();
  const int n = comm.size(), r = comm.rank();
  ASSERT_GE(n, 2);

  // Sums in rank order: 0.1 + 0.2 + ... the same bits on every rank.
  std::vector<double> values = {0.1 * (r + 1), 1.0};
  comm.allreduce_sum(values);
  double expected = 0.1;
  for (int q = 1; q < n; ++q) expected += 0.1 * (q + 1);
  EXPECT_EQ(values[0], expected);
  EXPECT_EQ(values[1], double(n));
  std::vector<int64_t> counts64 = {r, 1};
  comm.allreduce_sum(counts64);
  EXPECT_EQ(counts64[0], int64_t(n) * (n - 1) / 2);
  EXPECT_EQ(comm.allgather(std::string(size_t(r), 'x')).back(), std::string(size_t(n - 1), 'x'));

  // Reduce-scatter with uneven pieces, rank 1's empty: rank q sends q + i at place i.
  std::vector<int> counts(size_t(n), 2);
  counts[1] = 0;
  const int total = std::accumulate(counts.begin(), counts.end(), 0);
  std::vector<float> send(static_cast<size_t>(total));
  for (int i = 0; i < total; ++i) send[size_t(i)] = float(r + i);
  std::vector<float> recv(static_cast<size_t>(counts[size_t(r)]), -1.0f);
  Request request = comm.ireduce_scatter_sum(send, recv, counts);
  request.wait();
  const int offset = std::accumulate(counts.begin(), counts.begin() + r, 0);
  for (int i = 0; i < counts[size_t(r)]; ++i)
    EXPECT_EQ(recv[size_t(i)], float(n * (offset + i) + n * (n - 1) / 2)) << "rank " << r << " element " << i;

  // All-gather in place and gather to rank 0.
  std::vector<float> buffer(static_cast<size_t>(total), 0.0f);
  for (int i = 0; i < counts[size_t(r)]; ++i) buffer[size_t(offset + i)] = float(100 * r + i);
  comm.allgatherv(buffer, counts);
  std::vector<float> gathered(comm.is_root() ? size_t(total) : 0);
  comm.gatherv(std::span<const float>(buffer).subspan(size_t(offset), size_t(counts[size_t(r)])), gathered, counts, 0);
  for (int q = 0, at = 0; q < n; at += counts[size_t(q)], ++q)
    for (int i = 0; i < counts[size_t(q)]; ++i) {
      EXPECT_EQ(buffer[size_t(at + i)], float(100 * q + i));
      if (comm.is_root()) {
        EXPECT_EQ(gathered[size_t(at + i)], float(100 * q + i));
      }
    }

  // Sub-groups (expert parallelism's): even and odd ranks.
  const Communicator group = comm.split(r % 2, r);
  EXPECT_EQ(group.size(), (n + 1 - r % 2) / 2);
  EXPECT_EQ(group.rank(), r / 2);
  std::vector<double> ranks = {double(r)};
  group.allreduce_sum(ranks);
  double same_parity = 0;
  for (int q = r % 2; q < n; q += 2) same_parity += q;
  EXPECT_EQ(ranks[0], same_parity);

  // ZeRO-1: gradients of 1000 parameters reduced range by range (as backward finishes layers,
  // last first) into shards, then the shards all-gathered: every rank ends with the whole sum.
  train::DataParallel dp(comm, 1000);
  std::vector<float> grads(1000);
  for (size_t i = 0; i < grads.size(); ++i) grads[i] = float(r + 1) * float(i % 10);
  for (const auto& [b, e] : std::vector<std::pair<size_t, size_t>>{{900, 1000}, {350, 900}, {0, 350}})
    dp.reduce_range(grads, b, e);
  const std::span<float> mine = dp.finish(grads);
  ASSERT_EQ(mine.size(), dp.shard().size());
  const float ranks_sum = float(n * (n + 1) / 2);
  for (size_t i = 0; i < mine.size(); ++i) EXPECT_EQ(mine[i], ranks_sum * float((dp.shard().begin + i) % 10));
  std::vector<float> values_all(1000, 0.0f);
  std::copy(mine.begin(), mine.end(), values_all.begin() + ptrdiff_t(dp.shard().begin));
  dp.all_gather(values_all);
  for (size_t i = 0; i < values_all.size(); ++i) EXPECT_EQ(values_all[i], ranks_sum * float(i % 10)) << i;

  // Compressed: the same gradients through the all-to-all of payloads, decoded and summed by each
  // shard's owner. bf16 holds these small integers exactly; int8 rounds each rank's value by at
  // most half a step of its block. About 1/2 (bf16) and 1/4 (int8) of f32's bytes leave the rank.
  const int64_t f32_bytes = dp.take_bytes().reduce_scatter;
  for (const GradCompression kind : {GradCompression::BF16, GradCompression::Int8}) {
    train::DataParallel compressed(comm, 1000, kind);
    for (const auto& [b, e] : std::vector<std::pair<size_t, size_t>>{{900, 1000}, {350, 900}, {0, 350}})
      compressed.reduce_range(grads, b, e);
    const std::span<float> sum = compressed.finish(grads);
    ASSERT_EQ(sum.size(), compressed.shard().size());
    // int8: each rank's value is off by at most its block's absmax / 254 = (r + 1) * 9 / 254.
    const float limit = kind == GradCompression::BF16 ? 0.0f : ranks_sum * 9.0f / 254.0f;
    for (size_t i = 0; i < sum.size(); ++i)
      EXPECT_NEAR(sum[i], ranks_sum * float((compressed.shard().begin + i) % 10), limit) << grad_compression_name(kind);
    const int64_t sent = compressed.take_bytes().reduce_scatter;
    EXPECT_LT(sent, f32_bytes * (kind == GradCompression::BF16 ? 51 : 26) / 100) << grad_compression_name(kind);
  }
}

}  // namespace
}  // namespace deepmoe::dist
