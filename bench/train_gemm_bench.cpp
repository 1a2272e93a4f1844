// Training's GEMMs on one thread (the pool hands each thread a block): OpenBLAS sgemm (f32)
// against oneDNN bf16 (bf16 operands, f32 accumulation) for the three products of a linear
// layer: forward X·Wᵀ, input gradient dY·W, weight gradient dYᵀ·X. The bf16 timing includes
// converting the activation operands from f32, as the training layers do; weights are
// converted once per step there, so not here. Counter: GFLOP/s.
//   build/bench/train_gemm_bench --benchmark_min_time=0.2
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "kernels/gemm_bf16.h"
#include "kernels/matmul.h"

namespace {

enum class Product { Forward, InputGrad, WeightGrad };

std::vector<float> random_floats(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> v(n);
  for (auto& x : v) x = normal(rng);
  return v;
}

// args: tokens (rows of X), out_features, in_features. The layer: Y[t, out] = X[t, in] · W[out, in]ᵀ.
void run(benchmark::State& state, Product product, bool bf16) {
  const int64_t t = state.range(0), out = state.range(1), in = state.range(2);
  const auto x = random_floats(size_t(t * in), 1), w = random_floats(size_t(out * in), 2),
             dy = random_floats(size_t(t * out), 3);
  std::vector<float> result(size_t(std::max({t * out, t * in, out * in})));
  std::vector<uint16_t> xb(x.size()), wb(w.size()), dyb(dy.size());
  deepmoe::convert_f32_to_bf16(w.data(), wb.data(), w.size());
  if (bf16 && !deepmoe::cpu_has_bf16_gemm()) {
    state.SkipWithError("no AVX512-BF16");
    return;
  }
  deepmoe::use_single_threaded_blas();
  for (auto _ : state) {
    switch (product) {
      case Product::Forward:
        if (bf16) {
          deepmoe::convert_f32_to_bf16(x.data(), xb.data(), x.size());
          deepmoe::gemm_bf16(false, true, t, out, in, xb.data(), in, wb.data(), in, false, result.data(), out);
        } else {
          deepmoe::gemm_f32_ex(false, true, t, out, in, 1.0f, x.data(), in, w.data(), in, 0.0f, result.data(), out);
        }
        break;
      case Product::InputGrad:
        if (bf16) {
          deepmoe::convert_f32_to_bf16(dy.data(), dyb.data(), dy.size());
          deepmoe::gemm_bf16(false, false, t, in, out, dyb.data(), out, wb.data(), in, true, result.data(), in);
        } else {
          deepmoe::gemm_f32_ex(false, false, t, in, out, 1.0f, dy.data(), out, w.data(), in, 1.0f, result.data(), in);
        }
        break;
      case Product::WeightGrad:
        if (bf16) {
          deepmoe::convert_f32_to_bf16(dy.data(), dyb.data(), dy.size());
          deepmoe::convert_f32_to_bf16(x.data(), xb.data(), x.size());
          deepmoe::gemm_bf16(true, false, out, in, t, dyb.data(), out, xb.data(), in, true, result.data(), in);
        } else {
          deepmoe::gemm_f32_ex(true, false, out, in, t, 1.0f, dy.data(), out, x.data(), in, 1.0f, result.data(), in);
        }
        break;
    }
    benchmark::DoNotOptimize(result.data());
  }
  state.counters["GFLOP/s"] =
      benchmark::Counter(double(2 * t * out * in) * double(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
}

// The quickstart model's layers: a 64-row block of a dense or attention projection, an expert
// holding ~128 tokens, the lm_head block.
void shapes(benchmark::internal::Benchmark* b) {
  for (auto [t, out, in] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {64, 768, 256}, {64, 256, 768}, {128, 128, 256}, {128, 256, 128}, {64, 4096, 256}, {1024, 256, 256}})
    b->Args({t, out, in});
  b->ArgNames({"T", "out", "in"});
}

BENCHMARK_CAPTURE(run, forward_f32_openblas, Product::Forward, false)->Apply(shapes);
BENCHMARK_CAPTURE(run, forward_bf16_onednn, Product::Forward, true)->Apply(shapes);
BENCHMARK_CAPTURE(run, input_grad_f32_openblas, Product::InputGrad, false)->Apply(shapes);
BENCHMARK_CAPTURE(run, input_grad_bf16_onednn, Product::InputGrad, true)->Apply(shapes);
BENCHMARK_CAPTURE(run, weight_grad_f32_openblas, Product::WeightGrad, false)->Apply(shapes);
BENCHMARK_CAPTURE(run, weight_grad_bf16_onednn, Product::WeightGrad, true)->Apply(shapes);

}  // namespace

BENCHMARK_MAIN();
