// A fixed set of worker threads for data-parallel loops. Threads start once, at construction;
// parallel_for hands each worker one contiguous slice, so the split depends only on the range
// and the thread count, and every output element is computed by exactly one thread.
#pragma once
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

  // Calls body(begin, end) on disjoint slices covering [0, n). Slices are multiples of `grain`
  // (except the last) so SIMD kernels get aligned blocks. Blocks until all slices are done.
  void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& body);

 private:
  void worker_loop(int index);

  int n_threads_;
  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  const std::function<void(int64_t, int64_t)>* body_ = nullptr;
  int64_t n_ = 0;
  int64_t grain_ = 1;
  uint64_t generation_ = 0;
  int pending_ = 0;
  bool stop_ = false;
};

}  // namespace deepmoe
