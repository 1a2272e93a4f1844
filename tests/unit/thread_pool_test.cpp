#include "core/thread_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

namespace deepmoe {
namespace {

TEST(ThreadPoolTest, EveryIndexIsVisitedExactlyOnce) {
  for (int threads : {1, 2, 3, 7}) {
    ThreadPool pool(threads);
    for (int64_t n : {1, 5, 16, 17, 1000}) {
      for (int64_t grain : {1, 4, 16}) {
        std::vector<std::atomic<int>> visits(static_cast<size_t>(n));
        pool.parallel_for(n, grain, [&](int64_t begin, int64_t end) {
          EXPECT_TRUE(begin % grain == 0);
          for (int64_t i = begin; i < end; ++i) visits[size_t(i)]++;
        });
        for (int64_t i = 0; i < n; ++i) ASSERT_EQ(visits[size_t(i)].load(), 1) << threads << " " << n << " " << grain;
      }
    }
  }
}

TEST(ThreadPoolTest, ManySuccessiveCallsComplete) {
  ThreadPool pool(2);
  std::atomic<int64_t> total{0};
  for (int call = 0; call < 2000; ++call)
    pool.parallel_for(10, 1, [&](int64_t begin, int64_t end) { total += end - begin; });
  EXPECT_EQ(total.load(), 20000);
}

// Idle workers spin only briefly, then sleep; a call after a pause must wake them, not hang.
TEST(ThreadPoolTest, WakesWorkersThatFellAsleep) {
  ThreadPool pool(3);
  std::atomic<int64_t> total{0};
  for (int call = 0; call < 20; ++call) {
    std::this_thread::sleep_for(std::chrono::milliseconds(call % 2 ? 3 : 0));
    pool.parallel_for(300, 1, [&](int64_t begin, int64_t end) { total += end - begin; });
  }
  EXPECT_EQ(total.load(), 6000);
}

}  // namespace
}  // namespace deepmoe
