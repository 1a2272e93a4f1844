// Roofline measurement for the GEMM-choice study.
//   (a) peak f32 FMA throughput with AVX-512 (independent _mm512_fmadd_ps chains
//       held in registers), on 1 and 2 threads;
//   (b) memory read bandwidth: sum of a 1 GiB float array with AVX-512 loads,
//       best of several runs, on 1 and 2 threads.
// Only the kernels carry target("avx512f"); the rest builds for generic x86-64.
// Prints one JSON object on stdout.
#include <immintrin.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

namespace {

// Horizontal sum via a store (GCC 12's _mm512_reduce_add_ps trips a bogus -Wuninitialized).
__attribute__((target("avx512f"))) inline float hsum(__m512 v) {
  alignas(64) float t[16];
  _mm512_store_ps(t, v);
  float s = 0.f;
  for (float x : t) s += x;
  return s;
}

using Clock = std::chrono::steady_clock;

// 16 independent chains in named locals (an array got partly spilled to the
// stack inside the loop by GCC 12). Zen 5 has 2 x 512-bit FMA pipes with
// 4-cycle latency, so >= 8 chains saturate it; 16 leaves margin.
constexpr int kChains = 16;

__attribute__((target("avx512f"), noinline)) float fma_kernel(std::int64_t iters, float seed) {
#define DM_INIT(i) __m512 c##i = _mm512_set1_ps(seed + 0.001f * (i));
#define DM_FMA(i) c##i = _mm512_fmadd_ps(c##i, a, b);
#define DM_ALL(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15)
  DM_ALL(DM_INIT)
  const __m512 a = _mm512_set1_ps(0.999999f);
  const __m512 b = _mm512_set1_ps(1e-7f);
  for (std::int64_t it = 0; it < iters; ++it) {
    DM_ALL(DM_FMA)
  }
  __m512 s0 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(c0, c1), _mm512_add_ps(c2, c3)),
                            _mm512_add_ps(_mm512_add_ps(c4, c5), _mm512_add_ps(c6, c7)));
  __m512 s1 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(c8, c9), _mm512_add_ps(c10, c11)),
                            _mm512_add_ps(_mm512_add_ps(c12, c13), _mm512_add_ps(c14, c15)));
#undef DM_INIT
#undef DM_FMA
#undef DM_ALL
  return hsum(_mm512_add_ps(s0, s1));
}

__attribute__((target("avx512f"), noinline)) float sum_kernel(const float* p, std::size_t n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  std::size_t i = 0;
  for (; i + 128 <= n; i += 128) {
    a0 = _mm512_add_ps(a0, _mm512_load_ps(p + i + 0));
    a1 = _mm512_add_ps(a1, _mm512_load_ps(p + i + 16));
    a2 = _mm512_add_ps(a2, _mm512_load_ps(p + i + 32));
    a3 = _mm512_add_ps(a3, _mm512_load_ps(p + i + 48));
    a4 = _mm512_add_ps(a4, _mm512_load_ps(p + i + 64));
    a5 = _mm512_add_ps(a5, _mm512_load_ps(p + i + 80));
    a6 = _mm512_add_ps(a6, _mm512_load_ps(p + i + 96));
    a7 = _mm512_add_ps(a7, _mm512_load_ps(p + i + 112));
  }
  float tail = 0.f;
  for (; i < n; ++i) tail += p[i];
  __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                           _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
  return hsum(s) + tail;
}

// Runs fn(thread_index) on nthreads std::threads started together; returns wall seconds
// from the common start signal until the last one finishes.
double run_parallel(int nthreads, const std::function<void(int)>& fn) {
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> ts;
  for (int t = 0; t < nthreads; ++t) {
    ts.emplace_back([&, t] {
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) {
      }
      fn(t);
    });
  }
  while (ready.load() != nthreads) {
  }
  const auto t0 = Clock::now();
  go.store(true, std::memory_order_release);
  for (auto& th : ts) th.join();
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

volatile float g_sink = 0.f;

double measure_fma_gflops(int nthreads) {
  // ~0.35 s per run on one core at ~280 GFLOP/s.
  const std::int64_t iters = 200'000'000;
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    std::vector<float> out(nthreads);
    const double s = run_parallel(nthreads, [&](int t) { out[t] = fma_kernel(iters, 1.0f + t); });
    for (float v : out) g_sink = g_sink + v;
    const double flops = 2.0 * 16.0 * kChains * static_cast<double>(iters) * nthreads;
    best = std::max(best, flops / s / 1e9);
  }
  return best;
}

double measure_read_gbps(const float* p, std::size_t n, int nthreads, int reps) {
  double best = 0;
  for (int rep = 0; rep < reps; ++rep) {
    std::vector<float> out(nthreads);
    const std::size_t chunk = (n / nthreads) & ~std::size_t{127};
    const double s = run_parallel(nthreads, [&](int t) {
      const std::size_t lo = chunk * t;
      const std::size_t hi = (t == nthreads - 1) ? n : lo + chunk;
      out[t] = sum_kernel(p + lo, hi - lo);
    });
    for (float v : out) g_sink = g_sink + v;
    best = std::max(best, static_cast<double>(n) * sizeof(float) / s / 1e9);
  }
  return best;
}

bool cpu_has_avx512f() { return __builtin_cpu_supports("avx512f"); }

}  // namespace

int main() {
  if (!cpu_has_avx512f()) {
    std::printf("{\"error\": \"CPU lacks AVX-512F\"}\n");
    return 1;
  }
  const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  const int max_t = static_cast<int>(std::min(2u, hw));

  double fma[3] = {0, 0, 0};
  for (int t = 1; t <= max_t; ++t) fma[t] = measure_fma_gflops(t);

  const std::size_t bytes = std::size_t{1} << 30;  // 1 GiB
  const std::size_t n = bytes / sizeof(float);
  void* raw = std::aligned_alloc(2 << 20, bytes);
  if (!raw) {
    std::printf("{\"error\": \"allocation failed\"}\n");
    return 1;
  }
  madvise(raw, bytes, MADV_HUGEPAGE);  // THP is in madvise mode on this box
  float* p = static_cast<float*>(raw);
  // First touch split across the threads (harmless on a single-node VM).
  run_parallel(max_t, [&](int t) {
    const std::size_t lo = n / max_t * t, hi = (t == max_t - 1) ? n : lo + n / max_t;
    for (std::size_t i = lo; i < hi; ++i) p[i] = static_cast<float>(i & 1023) * 1e-3f;
  });
  double bw[3] = {0, 0, 0};
  for (int t = 1; t <= max_t; ++t) bw[t] = measure_read_gbps(p, n, t, 7);
  std::free(raw);

  std::printf("{\n");
  std::printf("  \"hardware_concurrency\": %u,\n", hw);
  std::printf("  \"fma_chains\": %d,\n", kChains);
  std::printf("  \"peak_f32_gflops\": {\"1\": %.1f, \"2\": %.1f},\n", fma[1], fma[2]);
  std::printf("  \"read_bw_gbps\": {\"1\": %.1f, \"2\": %.1f},\n", bw[1], bw[2]);
  std::printf("  \"read_bw_array_bytes\": %zu,\n", bytes);
  std::printf("  \"sink\": %g\n", static_cast<double>(g_sink) * 0.0);
  std::printf("}\n");
  return 0;
}
