#include "core/thread_pool.h"

#include <algorithm>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define DEEPMOE_CPU_RELAX() _mm_pause()
#else
#define DEEPMOE_CPU_RELAX() std::this_thread::yield()
#endif

namespace deepmoe {

namespace {
// Pause-loop iterations an idle worker spins before sleeping (~100 µs at 3 GHz): long enough to
// bridge the serial gaps between the loops of one decode step, short enough not to burn a core
// while the engine waits for work.
constexpr int kSpinsBeforeSleep = 1 << 13;

// A short pause while the wait is young; after that, give the core away each time, because a
// thread we wait for may be queued behind us when there are more threads than free cores
// (pure spinning then costs a scheduler tick, ~4 ms, per loop).
inline void relax(int spins) {
  if (spins < 1024) {
    DEEPMOE_CPU_RELAX();
  } else {
    std::this_thread::yield();
  }
}
}  // namespace

ThreadPool::ThreadPool(int n_threads) : n_threads_(std::max(1, n_threads)) {
  for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard lock(mutex_);
    stop_.store(true);
    generation_.fetch_add(1);
  }
  wake_.notify_all();
  for (auto& worker : workers_) worker.join();
}

void ThreadPool::take_blocks() {
  // Threads take runs of blocks from a shared counter until none are left, so a thread that gets
  // less memory bandwidth or starts late simply takes fewer blocks instead of holding up the rest.
  for (;;) {
    const int64_t first = next_block_.fetch_add(blocks_per_grab_, std::memory_order_relaxed);
    if (first >= n_blocks_) return;
    const int64_t begin = first * grain_;
    const int64_t end = std::min(n_, (first + blocks_per_grab_) * grain_);
    (*body_)(begin, end);
  }
}

void ThreadPool::parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& body) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  if (n_threads_ == 1 || n <= grain) {
    body(0, n);
    return;
  }
  body_ = &body;
  n_ = n;
  grain_ = grain;
  n_blocks_ = (n + grain - 1) / grain;
  // Eight grabs per thread on average: enough to even out, few enough to keep the counter cool.
  blocks_per_grab_ = std::max<int64_t>(1, n_blocks_ / (int64_t(n_threads_) * 8));
  next_block_.store(0, std::memory_order_relaxed);
  pending_.store(n_threads_ - 1, std::memory_order_relaxed);
  generation_.fetch_add(1);
  // Publish first, then look for sleepers (both sequentially consistent): a worker either sees the
  // new generation before it sleeps or is counted here and woken under the mutex.
  if (sleepers_.load() > 0) {
    { std::lock_guard lock(mutex_); }
    wake_.notify_all();
  }
  take_blocks();
  for (int spins = 0; pending_.load(std::memory_order_acquire) != 0; ++spins) relax(spins);
  body_ = nullptr;
}

void ThreadPool::worker_loop() {
  uint64_t seen = 0;
  for (;;) {
    int spins = 0;
    uint64_t current;
    while ((current = generation_.load()) == seen) {
      if (++spins < kSpinsBeforeSleep) {
        relax(spins);
        continue;
      }
      std::unique_lock lock(mutex_);
      sleepers_.fetch_add(1);
      wake_.wait(lock, [&] { return generation_.load() != seen; });
      sleepers_.fetch_sub(1);
      spins = 0;
    }
    seen = current;
    if (stop_.load()) return;
    take_blocks();
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

}  // namespace deepmoe
