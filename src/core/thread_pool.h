// A fixed set of worker threads for data-parallel loops; the one threading system of the engine
// (the GEMM library runs single-threaded inside our slices, so no two pools fight for cores).
// Threads start once, at construction; parallel_for splits the range into blocks of `grain`
// that threads take from a shared counter. Every element is computed by exactly one thread;
// callers whose arithmetic depends on block shapes use fixed blocks, so results never depend on
// which thread ran what or on the thread count. Decode issues hundreds of short loops per token, so idle
// workers spin briefly before sleeping: a condition-variable wake-up alone costs tens of µs.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace deepmoe {

class ThreadPool {
 public:
  // Starts n_threads - 1 workers (the caller is the n-th).
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Calls body(begin, end) on disjoint slices covering [0, n), possibly several per thread.
  // Slice bounds are multiples of `grain` (or n) so SIMD kernels get aligned blocks.
  // Blocks until all slices are done. Not reentrant: body must not call parallel_for.
  void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& body);

 private:
  void worker_loop();
  void take_blocks();

  int n_threads_;
  std::vector<std::thread> workers_;
  // The job: written by the caller before generation_ is bumped, read by workers after.
  const std::function<void(int64_t, int64_t)>* body_ = nullptr;
  int64_t n_ = 0;
  int64_t grain_ = 1;
  int64_t n_blocks_ = 0;
  int64_t blocks_per_grab_ = 1;
  std::atomic<int64_t> next_block_{0};
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  // Sleeping workers wait here; the caller only takes the mutex when someone sleeps.
  std::mutex mutex_;
  std::condition_variable wake_;
  std::atomic<int> sleepers_{0};
};

}  // namespace deepmoe
