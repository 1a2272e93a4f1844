// y = x·Wᵀ on the model's shapes: deepmoe's matmul (BF16, F32 and quantized weights) against
// OpenBLAS sgemv/sgemm with F32 weights. Weights rotate through a pool larger than the last-level cache
// so M=1 numbers are DRAM-bound, as in real decode. Counters: GFLOP/s and weight GB/s.
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <cstdlib>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "kernels/matmul.h"
#include "kernels/quantize.h"

namespace {

using deepmoe::DType;

// Weights rotate through this many bytes of copies so that each call reads DRAM, not cache.
// DEEPMOE_BENCH_POOL_MB=1 measures a kernel's in-cache (compute) speed instead.
const size_t kPoolBytes = [] {
  const char* mb = std::getenv("DEEPMOE_BENCH_POOL_MB");
  return size_t(mb ? std::max(0, std::atoi(mb)) : 256) << 20;
}();

struct Weights {
  std::vector<std::vector<float>> f32;
  std::vector<std::vector<uint16_t>> bf16;
};

Weights make_pool(int64_t rows, int64_t cols, bool bf16) {
  const size_t bytes = size_t(rows * cols) * (bf16 ? 2 : 4);
  const size_t copies = std::max<size_t>(2, kPoolBytes / bytes);
  Weights pool;
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  for (size_t c = 0; c < copies; ++c) {
    if (bf16) {
      auto& w = pool.bf16.emplace_back(size_t(rows * cols));
      for (auto& v : w) v = deepmoe::f32_to_bf16(normal(rng));
    } else {
      auto& w = pool.f32.emplace_back(size_t(rows * cols));
      for (auto& v : w) v = normal(rng);
    }
  }
  return pool;
}

void report(benchmark::State& state, int64_t m, int64_t rows, int64_t cols, size_t weight_bytes) {
  state.counters["GFLOP/s"] =
      benchmark::Counter(double(2 * m * rows * cols) * double(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
  state.counters["weight_GB/s"] =
      benchmark::Counter(double(weight_bytes) * double(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
}

// args: M, rows (N), cols (K), threads
void BM_deepmoe(benchmark::State& state, DType dtype) {
  const int64_t m = state.range(0), rows = state.range(1), cols = state.range(2);
  const int threads = int(state.range(3));
  const bool bf16 = dtype == DType::BF16;
  Weights pool = make_pool(rows, cols, bf16);
  std::vector<float> x(size_t(m * cols), 0.5f), y(size_t(m * rows));
  const deepmoe::Context threads_pool(threads);
  size_t next = 0;
  const size_t copies = bf16 ? pool.bf16.size() : pool.f32.size();
  for (auto _ : state) {
    const void* data = bf16 ? static_cast<const void*>(pool.bf16[next].data()) : pool.f32[next].data();
    deepmoe::WeightMatrix w;
    w.format = bf16 ? deepmoe::WeightFormat::BF16 : deepmoe::WeightFormat::F32;
    w.data = data;
    w.rows = rows;
    w.cols = cols;
    deepmoe::matmul(threads_pool, x.data(), m, w, y.data());
    benchmark::DoNotOptimize(y.data());
    next = (next + 1) % copies;
  }
  report(state, m, rows, cols, size_t(rows * cols) * (bf16 ? 2 : 4));
}

// Quantized weights: `w8a8` is Int8 with per-token dynamic uint8 activations.
enum class Quant { Q8_0, Q4_0, W8, W4G128, W8A8 };

void BM_deepmoe_quant(benchmark::State& state, Quant quant) {
  using deepmoe::WeightFormat;
  const int64_t m = state.range(0), rows = state.range(1), cols = state.range(2);
  const WeightFormat format = quant == Quant::Q8_0     ? WeightFormat::Q8_0
                              : quant == Quant::Q4_0   ? WeightFormat::Q4_0
                              : quant == Quant::W4G128 ? WeightFormat::Int4
                                                       : WeightFormat::Int8;
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  std::vector<float> source(size_t(rows * cols));
  for (auto& v : source) v = normal(rng);
  std::vector<deepmoe::QuantizedMatrix> pool;
  do {
    pool.push_back(deepmoe::quantize_matrix(source.data(), rows, cols, format, 128));
  } while (pool.size() < 2 || pool.size() * pool.back().view().bytes() < kPoolBytes);
  std::vector<float> x(size_t(m * cols), 0.5f), y(size_t(m * rows));
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(i % 7) * 0.25f - 0.7f;
  const deepmoe::Context threads_pool(int(state.range(3)));
  size_t next = 0;
  for (auto _ : state) {
    deepmoe::WeightMatrix w = pool[next].view();
    if (quant == Quant::W8A8) w.activation_quant = deepmoe::ActivationQuant::Dynamic;
    deepmoe::matmul(threads_pool, x.data(), m, w, y.data());
    benchmark::DoNotOptimize(y.data());
    next = (next + 1) % pool.size();
  }
  report(state, m, rows, cols, pool[0].view().bytes());
}

void BM_openblas_f32(benchmark::State& state) {
  const int64_t m = state.range(0), rows = state.range(1), cols = state.range(2);
  Weights pool = make_pool(rows, cols, false);
  std::vector<float> x(size_t(m * cols), 0.5f), y(size_t(m * rows));
  openblas_set_num_threads(int(state.range(3)));
  size_t next = 0;
  for (auto _ : state) {
    const float* w = pool.f32[next].data();
    if (m == 1) {
      cblas_sgemv(CblasRowMajor, CblasNoTrans, blasint(rows), blasint(cols), 1.0f, w, blasint(cols), x.data(), 1, 0.0f,
                  y.data(), 1);
    } else {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, blasint(m), blasint(rows), blasint(cols), 1.0f, x.data(),
                  blasint(cols), w, blasint(cols), 0.0f, y.data(), blasint(rows));
    }
    benchmark::DoNotOptimize(y.data());
    next = (next + 1) % pool.f32.size();
  }
  report(state, m, rows, cols, size_t(rows * cols) * 4);
}

// DeepSeek-V2-Lite shapes (hidden 2048): q_proj 3072x2048, kv_a 576x2048, expert gate 1408x2048,
// expert down 2048x1408, plus the small model's lm_head 32000x512.
void shapes(benchmark::internal::Benchmark* b) {
  for (int threads : {1, 2})
    for (int64_t m : {1, 2, 3, 4, 64, 512})
      for (auto [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{
               {3072, 2048}, {576, 2048}, {1408, 2048}, {2048, 1408}, {32000, 512}})
        b->Args({m, rows, cols, threads});
  b->ArgNames({"M", "N", "K", "threads"})->UseRealTime();
}

BENCHMARK_CAPTURE(BM_deepmoe, bf16, DType::BF16)->Apply(shapes);
BENCHMARK_CAPTURE(BM_deepmoe, f32, DType::F32)->Apply(shapes);
BENCHMARK(BM_openblas_f32)->Apply(shapes);
BENCHMARK_CAPTURE(BM_deepmoe_quant, q8_0, Quant::Q8_0)->Apply(shapes);
BENCHMARK_CAPTURE(BM_deepmoe_quant, q4_0, Quant::Q4_0)->Apply(shapes);
BENCHMARK_CAPTURE(BM_deepmoe_quant, w8, Quant::W8)->Apply(shapes);
BENCHMARK_CAPTURE(BM_deepmoe_quant, w4g128, Quant::W4G128)->Apply(shapes);
BENCHMARK_CAPTURE(BM_deepmoe_quant, w8a8, Quant::W8A8)->Apply(shapes);

}  // namespace

BENCHMARK_MAIN();
