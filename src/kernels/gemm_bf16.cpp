#include "kernels/gemm_bf16.h"

#include <dlfcn.h>
#include <immintrin.h>

#include <map>
#include <oneapi/dnnl/dnnl.hpp>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"

namespace deepmoe {

namespace {

using dnnl::memory;
using Dt = memory::data_type;

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// One primitive per shape family. oneDNN's JIT GEMM keeps its speed with one dimension given
// at run time, but falls back to its reference loop (1000x slower) when all are: so the token
// count is the run-time dimension, which is M for products with activations on the left
// (forward, input gradient) and K for weight gradients (Aᵀ·B). Everything else is fixed.
struct ShapeKey {
  bool transpose_a, transpose_b, accumulate;
  int64_t m, n, k, lda, ldb, ldc;  // the run-time one is -1
  auto operator<=>(const ShapeKey&) const = default;
};

memory::dims strides(bool transposed, int64_t ld) { return transposed ? memory::dims{1, ld} : memory::dims{ld, 1}; }

struct Plan {
  dnnl::matmul primitive;
  memory::desc scratchpad;
};

Plan make_plan(const ShapeKey& key) {
  const auto dim = [](int64_t v) { return v < 0 ? DNNL_RUNTIME_DIM_VAL : memory::dim(v); };
  const memory::desc a({dim(key.m), dim(key.k)}, Dt::bf16, strides(key.transpose_a, key.lda));
  const memory::desc b({dim(key.k), key.n}, Dt::bf16, strides(key.transpose_b, key.ldb));
  const memory::desc c({dim(key.m), key.n}, Dt::f32, memory::dims{key.ldc, 1});
  dnnl::primitive_attr attr;
  // Our pool runs these concurrently: each thread brings its own scratchpad.
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  if (key.accumulate) {
    dnnl::post_ops sum;
    sum.append_sum(1.0f);
    attr.set_post_ops(sum);
  }
  const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, b, c), attr, cpu_engine());
  return {dnnl::matmul(pd), pd.scratchpad_desc()};
}

// Per thread: primitives, stream and scratchpad are not shared, so pool threads never contend.
struct ThreadState {
  ThreadState() : stream(cpu_engine()) {
    // Debian's oneDNN is OpenMP-threaded; our pool already splits the work, so oneDNN must
    // not start a team of its own on each pool thread. The OpenMP runtime is oneDNN's
    // dependency, not ours: found at run time, so we do not tie our build to one compiler's.
    using SetThreads = void (*)(int);
    if (const auto set = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "omp_set_num_threads"))) set(1);
  }
  dnnl::stream stream;
  std::map<ShapeKey, Plan> plans;
  std::vector<uint8_t> scratchpad;
};

ThreadState& thread_state() {
  thread_local ThreadState state;
  return state;
}

const Plan& plan_for(ThreadState& state, const ShapeKey& key) {
  auto it = state.plans.find(key);
  if (it == state.plans.end()) {
    try {
      it = state.plans.emplace(key, make_plan(key)).first;
    } catch (const dnnl::error& e) {
      fail("oneDNN bf16 matmul ({}x{}x{}): {}", key.m, key.n, key.k, e.what());
    }
  }
  return it->second;
}

__attribute__((target("avx512f,avx512bf16,avx512vl"))) void convert_avx512_bf16(const float* src, uint16_t* dst,
                                                                                size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256bh packed = _mm512_cvtneps_pbh(_mm512_loadu_ps(src + i));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), reinterpret_cast<const __m256i&>(packed));
  }
  for (; i < n; ++i) dst[i] = f32_to_bf16(src[i]);
}

}  // namespace

bool cpu_has_bf16_gemm() {
  static const bool has = __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vl");
  return has;
}

void gemm_bf16(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, const uint16_t* a, int64_t lda,
               const uint16_t* b, int64_t ldb, bool accumulate, float* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {  // an empty sum: C = 0 (+ C)
    if (!accumulate)
      for (int64_t i = 0; i < m; ++i) std::fill_n(c + i * ldc, n, 0.0f);
    return;
  }
  ThreadState& state = thread_state();
  const ShapeKey key{transpose_a, transpose_b, accumulate, transpose_a ? m : -1, n, transpose_a ? -1 : k,
                     lda,         ldb,         ldc};
  const Plan& plan = plan_for(state, key);
  const memory::desc a_md({m, k}, Dt::bf16, strides(transpose_a, lda));
  const memory::desc b_md({k, n}, Dt::bf16, strides(transpose_b, ldb));
  const memory::desc c_md({m, n}, Dt::f32, memory::dims{ldc, 1});
  if (state.scratchpad.size() < plan.scratchpad.get_size()) state.scratchpad.resize(plan.scratchpad.get_size());
  const dnnl::engine& engine = cpu_engine();
  plan.primitive.execute(state.stream,
                         {{DNNL_ARG_SRC, memory(a_md, engine, const_cast<uint16_t*>(a))},
                          {DNNL_ARG_WEIGHTS, memory(b_md, engine, const_cast<uint16_t*>(b))},
                          {DNNL_ARG_DST, memory(c_md, engine, c)},
                          {DNNL_ARG_SCRATCHPAD, memory(plan.scratchpad, engine, state.scratchpad.data())}});
}

void convert_f32_to_bf16(const float* src, uint16_t* dst, size_t n) {
  if (cpu_has_bf16_gemm()) return convert_avx512_bf16(src, dst, n);
  for (size_t i = 0; i < n; ++i) dst[i] = f32_to_bf16(src[i]);
}

}  // namespace deepmoe
