// What every forward and backward runs with, passed down explicitly: the thread pool, the GEMM
// precision, batch invariance, an observer of matmul inputs, and the matmul's scratch. There is
// no process-wide setting: two models and a trainer in one process each have their own context.
// (It lives in kernels/, not core/, because its settings choose kernels and its observer sees
// WeightMatrix, a kernels type.)
#pragma once
#include <cstdint>
#include <functional>
#include <memory>

#include "core/thread_pool.h"

namespace deepmoe {

struct WeightMatrix;
struct MatmulScratch;

// The operands of the GEMMs with many rows: f32, or bf16 with f32 accumulation (mixed-precision
// training; needs cpu_has_bf16_gemm()).
enum class GemmPrecision { F32, BF16 };

// Sees the input of every matmul before the product (calibration records each weight's range).
using MatmulObserver = std::function<void(const WeightMatrix& w, const float* x, int64_t n_rows, int64_t x_stride)>;

struct ContextOptions {
  // Batch-invariant mode (the server's): every row of every product, and every query row of
  // attention, is computed by the same kernel in the same order whatever the other rows of its
  // batch, so a sequence's tokens do not depend on what it is batched with (kernels/matmul.h).
  bool batch_invariant = false;
  GemmPrecision precision = GemmPrecision::F32;
  // The portable quantized kernels even where AVX-512 exists (tests and benchmarks).
  bool portable_quant_kernels = false;
  MatmulObserver observer;
};

class Context {
 public:
  // Owns a pool of n_threads (and makes the GEMM library single-threaded: our pool owns the cores).
  explicit Context(int n_threads, ContextOptions options = {});
  // Runs on `pool`, which must outlive the context.
  Context(ThreadPool& pool, ContextOptions options);
  Context(Context&&) noexcept;
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  ThreadPool& pool() const { return *pool_; }
  const ContextOptions& options() const { return options_; }
  bool batch_invariant() const { return options_.batch_invariant; }
  GemmPrecision precision() const { return options_.precision; }
  // The matmul's buffers of the thread that calls with this context (one context per thread).
  MatmulScratch& matmul_scratch() const { return *scratch_; }

  // The same settings on a one-thread pool: for layers run inside a parallel region (training's
  // experts, one per thread), which must not split their work again. Create it in the region's body.
  Context on_this_thread() const;

 private:
  std::unique_ptr<ThreadPool> owned_pool_;
  ThreadPool* pool_;
  ContextOptions options_;
  std::unique_ptr<MatmulScratch> scratch_;
};

}  // namespace deepmoe
