// Jobs 0..n-1 on a few threads of their own, for work that waits rather than computes (HTTP
// requests, sandboxed programs): the first exception stops the rest and is rethrown.
#pragma once
#include <cstddef>
#include <functional>

namespace deepmoe::eval {

void run_concurrently(size_t n, int threads, const std::function<void(size_t)>& job);

}  // namespace deepmoe::eval
