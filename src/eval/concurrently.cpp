#include "eval/concurrently.h"

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace deepmoe::eval {

void run_concurrently(size_t n, int threads, const std::function<void(size_t)>& job) {
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::exception_ptr first;
  std::mutex mutex;
  std::vector<std::thread> workers;
  for (int t = 0; t < std::max(1, threads); ++t)
    workers.emplace_back([&] {
      for (size_t i = next++; i < n && !failed; i = next++) {
        try {
          job(i);
        } catch (...) {
          std::lock_guard lock(mutex);
          if (!first) first = std::current_exception();
          failed = true;
        }
      }
    });
  for (auto& w : workers) w.join();
  if (first) std::rethrow_exception(first);
}

}  // namespace deepmoe::eval
