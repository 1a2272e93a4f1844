// ZeRO's shard arithmetic (dist/shards.h) and the solo communicator a process without mpirun
// trains with (dist/communicator.h): shards tile the buffer in rank order, per-rank counts of a
// range add up to the range, segments keep MPI's int counts, and the solo collectives are copies.
#include <gtest/gtest.h>

#include <numeric>

#include "core/error.h"
#include "dist/communicator.h"
#include "dist/shards.h"
#include "dist/world.h"

namespace deepmoe::dist {
namespace {

TEST(ShardsTest, ShardsTileTheBufferInRankOrderOnAlignedBoundaries) {
  for (const size_t total : {size_t(0), size_t(1), size_t(15), size_t(16), size_t(1000), size_t(11830000)}) {
    for (const int ranks : {1, 2, 3, 4, 7}) {
      const ShardLayout layout(total, ranks);
      ASSERT_EQ(layout.ranks(), ranks);
      size_t next = 0;
      for (int r = 0; r < ranks; ++r) {
        const Shard s = layout.shard(r);
        EXPECT_EQ(s.begin, next) << total << " over " << ranks;
        EXPECT_LE(s.begin, s.end);
        if (s.end != total) {
          EXPECT_EQ(s.end % 16, 0u) << "rank " << r << " of " << ranks << ", total " << total;
        }
        next = s.end;
      }
      EXPECT_EQ(next, total);
    }
  }
}

TEST(ShardsTest, ShardsAreBalancedUpToTheAlignment) {
  const ShardLayout layout(1000, 3);  // ceil(1000 / 3) = 334, aligned up to 336
  EXPECT_EQ(layout.shard(0), (Shard{0, 336}));
  EXPECT_EQ(layout.shard(1), (Shard{336, 672}));
  EXPECT_EQ(layout.shard(2), (Shard{672, 1000}));
  const ShardLayout tiny(10, 4);  // one aligned piece: the first rank owns it all, the others nothing
  EXPECT_EQ(tiny.shard(0), (Shard{0, 10}));
  EXPECT_EQ(tiny.shard(3).size(), 0u);
}

TEST(ShardsTest, CountsOfARangeAreItsIntersectionWithEachShard) {
  const ShardLayout layout(1000, 3);  // shards [0, 336) [336, 672) [672, 1000)
  EXPECT_EQ(layout.counts_in(300, 700), (std::vector<int>{36, 336, 28}));
  EXPECT_EQ(layout.counts_in(400, 500), (std::vector<int>{0, 100, 0}));
  EXPECT_EQ(layout.counts_in(0, 1000), (std::vector<int>{336, 336, 328}));
  EXPECT_EQ(layout.counts_in(672, 672), (std::vector<int>{0, 0, 0}));
  for (size_t b = 0; b < 1000; b += 37) {
    const auto counts = layout.counts_in(b, 1000);
    EXPECT_EQ(std::accumulate(counts.begin(), counts.end(), size_t(0)), 1000 - b);
  }
  EXPECT_THROW(layout.counts_in(10, 1001), Error);
  EXPECT_THROW(layout.counts_in(20, 10), Error);
  EXPECT_EQ(intersect({336, 672}, 700, 800), (Shard{672, 672}));
  EXPECT_EQ(intersect({336, 672}, 0, 100), (Shard{336, 336}));
}

TEST(ShardsTest, SegmentsCutARangeIntoPiecesMpiCanCount) {
  EXPECT_EQ(segments(5, 25, 10), (std::vector<std::pair<size_t, size_t>>{{5, 15}, {15, 25}}));
  EXPECT_EQ(segments(5, 26, 10), (std::vector<std::pair<size_t, size_t>>{{5, 15}, {15, 25}, {25, 26}}));
  EXPECT_TRUE(segments(7, 7).empty());
  // A DeepSeek-V3 MoE layer's 11.3 G parameters: every per-rank count of every segment fits an int.
  const size_t layer = size_t(256) * 3 * 7168 * 2048;
  const ShardLayout layout(layer * 2, 8);
  for (const auto& [b, e] : segments(layer / 2, layer / 2 + layer)) EXPECT_NO_THROW(layout.counts_in(b, e));
  EXPECT_THROW(layout.counts_in(0, layer), Error);  // one collective for the whole layer would not
}

TEST(SoloCommunicatorTest, IsOneRankWhoseCollectivesAreCopies) {
  const Communicator solo = Communicator::solo();
  EXPECT_EQ(solo.rank(), 0);
  EXPECT_EQ(solo.size(), 1);
  EXPECT_TRUE(solo.is_root());
  EXPECT_FALSE(solo.host().empty());
  solo.barrier();

  std::vector<double> sums = {1.5, -2.0};
  solo.allreduce_sum(sums);
  EXPECT_EQ(sums, (std::vector<double>{1.5, -2.0}));
  std::vector<int64_t> counts = {3, 4};
  solo.allreduce_sum(counts);
  EXPECT_EQ(counts, (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(solo.allgather("a host"), (std::vector<std::string>{"a host"}));

  const std::vector<float> send = {1, 2, 3};
  std::vector<float> recv(3, 0.0f);
  const int all[] = {3};
  Request request = solo.ireduce_scatter_sum(send, recv, all);
  EXPECT_TRUE(request.test());
  request.wait();
  EXPECT_EQ(recv, send);

  std::vector<float> buffer = {4, 5, 6};
  solo.allgatherv(buffer, all);
  EXPECT_EQ(buffer, (std::vector<float>{4, 5, 6}));
  std::vector<float> gathered(3, 0.0f);
  solo.gatherv(buffer, gathered, all, 0);
  EXPECT_EQ(gathered, buffer);

  const Communicator group = solo.split(0, 0);  // expert-parallel groups of one
  EXPECT_EQ(group.size(), 1);
}

TEST(SoloCommunicatorTest, MismatchedCountsAreErrorsNotCrashes) {
  const Communicator solo = Communicator::solo();
  const std::vector<float> send = {1, 2, 3};
  std::vector<float> recv(2, 0.0f);
  const int three[] = {3}, two_ranks[] = {1, 2};
  EXPECT_THROW(solo.ireduce_scatter_sum(send, recv, three), Error);
  EXPECT_THROW(solo.ireduce_scatter_sum(send, recv, two_ranks), Error);
  std::vector<float> buffer(2);
  EXPECT_THROW(solo.allgatherv(buffer, three), Error);
  EXPECT_THROW(solo.gatherv(send, buffer, three, 1), Error);
  EXPECT_THROW(solo.split(-1, 0), Error);
}

TEST(WorldTest, WithoutMpirunItIsSoloAndNeverStartsMpi) {
  if (World::launched_by_mpirun()) GTEST_SKIP() << "running under mpirun";
  World world;
  EXPECT_EQ(world.communicator().size(), 1);
  world.abort_job(1);  // a solo world just returns
}

}  // namespace
}  // namespace deepmoe::dist
