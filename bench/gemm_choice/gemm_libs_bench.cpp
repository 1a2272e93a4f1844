// GEMM library comparison for deepmoe (Google Benchmark).
//
// Computes Y[M,N] = X[M,K] * W[N,K]^T with W row-major [out,in] (HuggingFace
// layout) and X f32 row-major, for the model's projection shapes.
//
// Backends (benchmark name prefix):
//   openblas_f32        cblas_sgemm(RowMajor, NoTrans, Trans), f32 weights
//   openblas_f32_gemv   cblas_sgemv, M == 1 only (OpenBLAS 0.3.21 does not forward M==1 gemm to gemv)
//   openblas_bf16       cblas_sbgemm, only registered if the symbol exists at runtime (dlsym)
//   dnnl_f32            oneDNN matmul, f32, weights described as {K,N} tag::ba == W[N,K] row-major, fixed M
//   dnnl_f32_rtM        same, one primitive per (N,K) with M = DNNL_RUNTIME_DIM_VAL
//   dnnl_f32_packed     weights tag::any, reordered once to oneDNN's blocked layout (not timed), fixed M
//   dnnl_bf16           src bf16 (X converted f32->bf16 every call, timed), weights bf16 (tag::ba), dst f32
//   dnnl_bf16_rtM       same with runtime M
//   dnnl_bf16_packed    weights bf16 tag::any, reordered once (not timed), fixed M
//   ref_bf16            hand loop over bf16 weights, M <= 4, target_clones(x86-64-v4, x86-64-v3, default)
//
// Weights are rotated through a ~256 MiB pool of distinct copies (one copy per
// iteration), so small-M timings are DRAM-bound as in real decode, not L3-hot.
// Every (backend, M, N, K) is checked once against a double-precision loop.
#include <benchmark/benchmark.h>
#include <cblas.h>
#include <dlfcn.h>
#include <omp.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <oneapi/dnnl/dnnl.hpp>
#include <string>
#include <thread>
#include <vector>

extern "C" {
char* openblas_get_corename(void);
char* openblas_get_config(void);
void openblas_set_num_threads(int);
}

namespace {

using Clock = std::chrono::steady_clock;
using bf16_t = std::uint16_t;

constexpr std::size_t kPoolBytes = std::size_t{256} << 20;

// ---------------------------------------------------------------- utilities

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
template <class T>
using Buf = std::unique_ptr<T[], FreeDeleter>;

template <class T>
Buf<T> alloc(std::size_t n) {
  std::size_t bytes = (n * sizeof(T) + 4095) & ~std::size_t{4095};
  void* p = std::aligned_alloc(bytes >= (std::size_t{4} << 20) ? (2u << 20) : 4096u, bytes);
  if (!p) std::abort();
  if (bytes >= (std::size_t{4} << 20)) madvise(p, bytes, MADV_HUGEPAGE);
  return Buf<T>(static_cast<T*>(p));
}

struct Rng {
  std::uint64_t s;
  explicit Rng(std::uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  float next() {  // uniform in [-1, 1)
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return static_cast<float>(static_cast<std::int32_t>(s >> 32)) * (1.0f / 2147483648.0f);
  }
};

inline float bf16_to_f32(bf16_t h) {
  std::uint32_t u = static_cast<std::uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline bf16_t f32_to_bf16(float f) {  // round to nearest even (inputs are finite)
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<bf16_t>(u >> 16);
}

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) void convert_f32_to_bf16(const float* in,
                                                                                                       bf16_t* out,
                                                                                                       std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    std::uint32_t u;
    std::memcpy(&u, &in[i], sizeof u);
    u += 0x7FFFu + ((u >> 16) & 1u);
    out[i] = static_cast<bf16_t>(u >> 16);
  }
}

// Global inputs, created lazily.
constexpr int kMaxM = 512, kMaxK = 2048;
const float* x_f32() {
  static Buf<float> x = [] {
    auto b = alloc<float>(std::size_t{kMaxM} * kMaxK);
    Rng r(1);
    for (std::size_t i = 0; i < std::size_t{kMaxM} * kMaxK; ++i) b[i] = r.next();
    return b;
  }();
  return x.get();
}
const float* pool_f32() {
  static Buf<float> p = [] {
    const std::size_t n = kPoolBytes / sizeof(float);
    auto b = alloc<float>(n);
    Rng r(2);
    for (std::size_t i = 0; i < n; ++i) b[i] = r.next();
    return b;
  }();
  return p.get();
}
const bf16_t* pool_bf16() {
  static Buf<bf16_t> p = [] {
    const std::size_t n = kPoolBytes / sizeof(bf16_t);
    auto b = alloc<bf16_t>(n);
    Rng r(3);
    for (std::size_t i = 0; i < n; ++i) b[i] = f32_to_bf16(r.next());
    return b;
  }();
  return p.get();
}
std::size_t pool_copies(std::size_t w_bytes) { return std::max<std::size_t>(1, kPoolBytes / w_bytes); }

// ---------------------------------------------------------------- tiny thread pool (ref kernel)

class SpinPool {
 public:
  explicit SpinPool(int n) : n_(n) {
    for (int i = 1; i < n_; ++i) ws_.emplace_back([this, i] { worker(i); });
  }
  ~SpinPool() {
    stop_ = true;
    gen_.fetch_add(1, std::memory_order_release);
    gen_.notify_all();
    for (auto& t : ws_) t.join();
  }
  int size() const { return n_; }
  void run(const std::function<void(int)>& fn) {
    if (n_ == 1) return fn(0);
    job_ = &fn;
    done_.store(0, std::memory_order_relaxed);
    gen_.fetch_add(1, std::memory_order_release);
    gen_.notify_all();
    fn(0);
    while (done_.load(std::memory_order_acquire) != n_ - 1) {
    }
  }

 private:
  void worker(int i) {
    std::uint64_t seen = 0;
    for (;;) {
      std::uint64_t g;
      int spins = 0;
      while ((g = gen_.load(std::memory_order_acquire)) == seen) {
        if (++spins > 200000) gen_.wait(seen, std::memory_order_acquire);
      }
      seen = g;
      if (stop_) return;
      (*job_)(i);
      done_.fetch_add(1, std::memory_order_release);
    }
  }
  int n_;
  std::vector<std::thread> ws_;
  std::atomic<std::uint64_t> gen_{0};
  std::atomic<int> done_{0};
  const std::function<void(int)>* job_ = nullptr;
  std::atomic<bool> stop_{false};
};

// ---------------------------------------------------------------- reference bf16 kernel (M <= 4)

// Reference decode kernel. Each dot product keeps 16 independent f32 lane
// accumulators in a GCC/Clang generic vector (vector_size(64)); target_clones
// lowers that to one zmm (x86-64-v4), two ymm (x86-64-v3) or four xmm (SSE2).
// Plain scalar loops over float acc[16] arrays were tried first: GCC 12 left the
// accumulators on the stack or picked a poor reduction scheme (and a bare
// "avx512f" clone enables neither FMA3 nor AVX512VL, so it emitted 256-bit
// vmulps+vaddps), hence generic vectors and arch=x86-64-v4/v3 clones.
typedef float v16sf __attribute__((vector_size(64)));
typedef std::uint32_t v16su __attribute__((vector_size(64)));
typedef std::uint16_t v16hu __attribute__((vector_size(32)));

inline __attribute__((always_inline)) v16sf load_f32x16(const float* p) {
  v16sf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline __attribute__((always_inline)) v16sf load_bf16x16(const bf16_t* p) {
  v16hu h;
  std::memcpy(&h, p, sizeof h);
  const v16su u = __builtin_convertvector(h, v16su) << 16;  // bf16 -> high half of f32
  return (v16sf)u;                                          // same-size vector cast = bit cast
}
typedef float v8sf __attribute__((vector_size(32)));
typedef float v4sf __attribute__((vector_size(16)));
// Tree reduction (a sequential `for j: s += v[j]` is 16 dependent adds).
inline __attribute__((always_inline)) float hsum16(v16sf v) {
  const v8sf a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                 __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  const v4sf b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
  return (b[0] + b[2]) + (b[1] + b[3]);
}

// One weight row against MR activation rows: the row's 64-element chunk is
// loaded and converted once, then FMA'd into 4 accumulators per activation row
// (4 x 16 lanes; K-direction unrolling keeps a single sequential weight stream,
// which measured ~40 GB/s on one core vs ~22 GB/s for 4 interleaved row streams).
template <int MR>
inline __attribute__((always_inline)) void rowdot_bf16(const float* __restrict X, std::size_t K,
                                                       const bf16_t* __restrict w, float* __restrict y,
                                                       std::size_t ystride) {
  v16sf a[MR][4] = {};
  std::size_t k = 0;
  for (; k + 64 <= K; k += 64) {
    const v16sf w0 = load_bf16x16(w + k), w1 = load_bf16x16(w + k + 16);
    const v16sf w2 = load_bf16x16(w + k + 32), w3 = load_bf16x16(w + k + 48);
#pragma GCC unroll 4
    for (int m = 0; m < MR; ++m) {
      const float* xm = X + m * K + k;
      a[m][0] += load_f32x16(xm) * w0;
      a[m][1] += load_f32x16(xm + 16) * w1;
      a[m][2] += load_f32x16(xm + 32) * w2;
      a[m][3] += load_f32x16(xm + 48) * w3;
    }
  }
  for (; k + 16 <= K; k += 16) {
    const v16sf w0 = load_bf16x16(w + k);
#pragma GCC unroll 4
    for (int m = 0; m < MR; ++m) a[m][0] += load_f32x16(X + m * K + k) * w0;
  }
#pragma GCC unroll 4
  for (int m = 0; m < MR; ++m) {
    float s = hsum16((a[m][0] + a[m][1]) + (a[m][2] + a[m][3]));
    for (std::size_t kk = k; kk < K; ++kk) s += X[m * K + kk] * bf16_to_f32(w[kk]);
    y[m * ystride] = s;
  }
}

#define DM_CLONES target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")

// Y[m, n0:n1] = X[m,:] . W[n,:] for all m < M (meant for M <= 4; larger M is
// handled in groups of 4 but re-streams the weights once per group).
__attribute__((DM_CLONES)) void ref_bf16_gemm(int M, const float* X, int K, const bf16_t* W, float* Y, int N, int n0,
                                              int n1) {
  const std::size_t Ks = static_cast<std::size_t>(K), Ns = static_cast<std::size_t>(N);
  for (int m0 = 0; m0 < M; m0 += 4) {
    const float* Xm = X + m0 * Ks;
    float* Ym = Y + m0 * Ns;
    const int mr = std::min(4, M - m0);
    for (int n = n0; n < n1; ++n) {
      const bf16_t* w = W + n * Ks;
      switch (mr) {
        case 1: rowdot_bf16<1>(Xm, Ks, w, Ym + n, Ns); break;
        case 2: rowdot_bf16<2>(Xm, Ks, w, Ym + n, Ns); break;
        case 3: rowdot_bf16<3>(Xm, Ks, w, Ym + n, Ns); break;
        default: rowdot_bf16<4>(Xm, Ks, w, Ym + n, Ns); break;
      }
    }
  }
}

// ---------------------------------------------------------------- runners

struct Runner {
  int M, N, K;
  std::size_t copies = 1;
  std::vector<float> Y;
  std::string impl;      // implementation string shown as benchmark label
  double create_ms = 0;  // primitive creation (oneDNN), 0 otherwise
  Runner(int m, int n, int k) : M(m), N(n), K(k), Y(static_cast<std::size_t>(m) * n) {}
  virtual ~Runner() = default;
  virtual void run(std::size_t copy) = 0;
  // Weights of copy 0 as f32 (what the backend multiplies with), for verification.
  virtual float w_at(std::size_t n, std::size_t k) const = 0;
};

struct OpenblasF32 : Runner {
  bool gemv;
  OpenblasF32(int m, int n, int k, bool use_gemv) : Runner(m, n, k), gemv(use_gemv) {
    copies = pool_copies(std::size_t{4} * n * k);
    impl = std::string("openblas:") + openblas_get_corename();
  }
  void run(std::size_t c) override {
    const float* W = pool_f32() + c * N * K;
    if (gemv) cblas_sgemv(CblasRowMajor, CblasNoTrans, N, K, 1.f, W, K, x_f32(), 1, 0.f, Y.data(), 1);
    else cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.f, x_f32(), K, W, K, 0.f, Y.data(), N);
  }
  float w_at(std::size_t n, std::size_t k) const override { return pool_f32()[n * K + k]; }
};

using sbgemm_fn = void (*)(CBLAS_ORDER, CBLAS_TRANSPOSE, CBLAS_TRANSPOSE, blasint, blasint, blasint, float,
                           const bf16_t*, blasint, const bf16_t*, blasint, float, float*, blasint);
sbgemm_fn find_sbgemm() { return reinterpret_cast<sbgemm_fn>(dlsym(RTLD_DEFAULT, "cblas_sbgemm")); }

struct OpenblasBf16 : Runner {
  sbgemm_fn fn;
  Buf<bf16_t> xb;
  OpenblasBf16(int m, int n, int k) : Runner(m, n, k), fn(find_sbgemm()), xb(alloc<bf16_t>(std::size_t(m) * k)) {
    copies = pool_copies(std::size_t{2} * n * k);
    impl = std::string("openblas:") + openblas_get_corename();
  }
  void run(std::size_t c) override {
    convert_f32_to_bf16(x_f32(), xb.get(), std::size_t(M) * K);
    fn(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.f, xb.get(), K, pool_bf16() + c * N * K, K, 0.f, Y.data(),
       N);
  }
  float w_at(std::size_t n, std::size_t k) const override { return bf16_to_f32(pool_bf16()[n * K + k]); }
};

dnnl::engine& eng() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}
dnnl::stream& strm() {
  static dnnl::stream s(eng());
  return s;
}

enum class DnnlMode { Plain, RuntimeM, Packed };

// Describes a blocked weights layout (dims {K,N}: 'a' = K, 'b' = N), e.g.
// "outer_strides=..., inner=16a64b2a", so one can see whether the packed layout
// oneDNN picks depends on M (it matters if weights are packed once at load time).
std::string blocking_str(const dnnl::memory::desc& md) {
  const auto& d = md.data;
  const auto& b = d.format_desc.blocking;
  std::string s = "strides=";
  for (int i = 0; i < d.ndims; ++i) s += std::to_string(b.strides[i]) + (i + 1 < d.ndims ? "," : "");
  s += " inner=";
  for (int i = 0; i < b.inner_nblks; ++i) s += std::to_string(b.inner_blks[i]) + "ab"[b.inner_idxs[i]];
  return s;
}

struct DnnlRunner : Runner {
  using dt = dnnl::memory::data_type;
  using tag = dnnl::memory::format_tag;
  bool bf16;
  dnnl::matmul prim;
  dnnl::memory src_mem, dst_mem;
  std::vector<dnnl::memory> w_mems;
  Buf<bf16_t> xb;
  Buf<char> packed;

  DnnlRunner(int m, int n, int k, bool use_bf16, DnnlMode mode) : Runner(m, n, k), bf16(use_bf16) {
    const dt sdt = bf16 ? dt::bf16 : dt::f32;
    const dnnl::memory::dim Md = (mode == DnnlMode::RuntimeM) ? DNNL_RUNTIME_DIM_VAL : m;
    // src {M,K} row-major, weights {K,N} with W[N,K] row-major storage => strides {1,K} == tag::ba.
    dnnl::memory::desc src_md({Md, k}, sdt, dnnl::memory::dims{k, 1});
    dnnl::memory::desc w_md = (mode == DnnlMode::Packed) ? dnnl::memory::desc({k, n}, sdt, tag::any)
                                                         : dnnl::memory::desc({k, n}, sdt, tag::ba);
    dnnl::memory::desc dst_md({Md, n}, dt::f32, dnnl::memory::dims{n, 1});
    const auto t0 = Clock::now();
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src_md, w_md, dst_md), eng());
    prim = dnnl::matmul(pd);
    create_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    impl = pd.impl_info_str();

    dnnl::memory::desc src_real({m, k}, sdt, tag::ab), dst_real({m, n}, dt::f32, tag::ab);
    if (bf16) {
      xb = alloc<bf16_t>(std::size_t(m) * k);
      src_mem = dnnl::memory(src_real, eng(), xb.get());
    } else {
      src_mem = dnnl::memory(src_real, eng(), const_cast<float*>(x_f32()));
    }
    dst_mem = dnnl::memory(dst_real, eng(), Y.data());

    const std::size_t esz = bf16 ? 2 : 4;
    copies = pool_copies(esz * n * k);
    char* base = bf16 ? reinterpret_cast<char*>(const_cast<bf16_t*>(pool_bf16()))
                      : reinterpret_cast<char*>(const_cast<float*>(pool_f32()));
    dnnl::memory::desc plain_md({k, n}, sdt, tag::ba);
    if (mode == DnnlMode::Packed) {
      const dnnl::memory::desc pmd = pd.weights_desc();
      impl += " w[" + blocking_str(pmd) + "]";
      const std::size_t psz = (pmd.get_size() + 63) & ~std::size_t{63};
      copies = std::max<std::size_t>(1, kPoolBytes / psz);
      packed = alloc<char>(psz * copies);
      for (std::size_t c = 0; c < copies; ++c) {
        dnnl::memory src(plain_md, eng(), base + c * esz * n * k);
        dnnl::memory dst(pmd, eng(), packed.get() + c * psz);
        dnnl::reorder(src, dst).execute(strm(), src, dst);
        w_mems.push_back(dst);
      }
      strm().wait();
    } else {
      for (std::size_t c = 0; c < copies; ++c) w_mems.emplace_back(plain_md, eng(), base + c * esz * n * k);
    }
  }
  void run(std::size_t c) override {
    if (bf16) convert_f32_to_bf16(x_f32(), xb.get(), std::size_t(M) * K);
    prim.execute(strm(), {{DNNL_ARG_SRC, src_mem}, {DNNL_ARG_WEIGHTS, w_mems[c]}, {DNNL_ARG_DST, dst_mem}});
    strm().wait();
  }
  float w_at(std::size_t n, std::size_t k) const override {
    return bf16 ? bf16_to_f32(pool_bf16()[n * K + k]) : pool_f32()[n * K + k];
  }
};

struct RefBf16 : Runner {
  SpinPool pool;
  std::function<void(int)> job;
  const bf16_t* W = nullptr;
  RefBf16(int m, int n, int k, int threads) : Runner(m, n, k), pool(threads) {
    copies = pool_copies(std::size_t{2} * n * k);
    impl = "ref:" +
           std::string(__builtin_cpu_supports("x86-64-v4")   ? "x86-64-v4"
                       : __builtin_cpu_supports("x86-64-v3") ? "x86-64-v3"
                                                             : "default") +
           " clone, " + std::to_string(threads) + " thr";
    job = [this](int t) {
      const int T = pool.size();
      const int per = (N + T - 1) / T;
      const int n0 = std::min(N, t * per), n1 = std::min(N, n0 + per);
      if (n0 < n1) ref_bf16_gemm(M, x_f32(), K, W, Y.data(), N, n0, n1);
    };
  }
  void run(std::size_t c) override {
    W = pool_bf16() + c * N * K;
    pool.run(job);
  }
  float w_at(std::size_t n, std::size_t k) const override { return bf16_to_f32(pool_bf16()[n * K + k]); }
};

// ---------------------------------------------------------------- verification

double verify(const Runner& r) {
  std::vector<int> rows;
  if (r.M <= 16) {
    for (int m = 0; m < r.M; ++m) rows.push_back(m);
  } else {
    for (int i = 0; i < 16; ++i) rows.push_back(static_cast<int>((static_cast<long>(r.M - 1) * i) / 15));
  }
  const float* X = x_f32();
  double num = 0, den = 0;
  std::vector<double> wrow(r.K);
  for (int n = 0; n < r.N; ++n) {
    for (int k = 0; k < r.K; ++k) wrow[k] = r.w_at(n, k);
    for (int m : rows) {
      double s = 0;
      const float* x = X + static_cast<std::size_t>(m) * r.K;
      for (int k = 0; k < r.K; ++k) s += static_cast<double>(x[k]) * wrow[k];
      const double d = r.Y[static_cast<std::size_t>(m) * r.N + n] - s;
      num += d * d;
      den += s * s;
    }
  }
  return std::sqrt(num / den);
}

// ---------------------------------------------------------------- benchmark plumbing

enum class Backend {
  OpenblasF32,
  OpenblasF32Gemv,
  OpenblasBf16,
  DnnlF32,
  DnnlF32Rt,
  DnnlF32Packed,
  DnnlBf16,
  DnnlBf16Rt,
  DnnlBf16Packed,
  RefBf16
};
const char* backend_name(Backend b) {
  switch (b) {
    case Backend::OpenblasF32: return "openblas_f32";
    case Backend::OpenblasF32Gemv: return "openblas_f32_gemv";
    case Backend::OpenblasBf16: return "openblas_bf16";
    case Backend::DnnlF32: return "dnnl_f32";
    case Backend::DnnlF32Rt: return "dnnl_f32_rtM";
    case Backend::DnnlF32Packed: return "dnnl_f32_packed";
    case Backend::DnnlBf16: return "dnnl_bf16";
    case Backend::DnnlBf16Rt: return "dnnl_bf16_rtM";
    case Backend::DnnlBf16Packed: return "dnnl_bf16_packed";
    case Backend::RefBf16: return "ref_bf16";
  }
  return "?";
}
bool is_bf16(Backend b) {
  return b == Backend::OpenblasBf16 || b == Backend::DnnlBf16 || b == Backend::DnnlBf16Rt ||
         b == Backend::DnnlBf16Packed || b == Backend::RefBf16;
}

std::unique_ptr<Runner> make_runner(Backend b, int M, int N, int K, int T) {
  // Materialize the lazily created inputs first so first_ms does not include them.
  (void)x_f32();
  (void)(is_bf16(b) ? static_cast<const void*>(pool_bf16()) : static_cast<const void*>(pool_f32()));
  openblas_set_num_threads(T);
  omp_set_num_threads(T);
  switch (b) {
    case Backend::OpenblasF32: return std::make_unique<OpenblasF32>(M, N, K, false);
    case Backend::OpenblasF32Gemv: return std::make_unique<OpenblasF32>(M, N, K, true);
    case Backend::OpenblasBf16: return std::make_unique<OpenblasBf16>(M, N, K);
    case Backend::DnnlF32: return std::make_unique<DnnlRunner>(M, N, K, false, DnnlMode::Plain);
    case Backend::DnnlF32Rt: return std::make_unique<DnnlRunner>(M, N, K, false, DnnlMode::RuntimeM);
    case Backend::DnnlF32Packed: return std::make_unique<DnnlRunner>(M, N, K, false, DnnlMode::Packed);
    case Backend::DnnlBf16: return std::make_unique<DnnlRunner>(M, N, K, true, DnnlMode::Plain);
    case Backend::DnnlBf16Rt: return std::make_unique<DnnlRunner>(M, N, K, true, DnnlMode::RuntimeM);
    case Backend::DnnlBf16Packed: return std::make_unique<DnnlRunner>(M, N, K, true, DnnlMode::Packed);
    case Backend::RefBf16: return std::make_unique<RefBf16>(M, N, K, T);
  }
  return nullptr;
}

struct Prepared {
  std::string key;
  std::unique_ptr<Runner> runner;
  double first_ms = 0, relerr = 0;
};

// Google Benchmark calls a benchmark function several times (iteration-count
// probing, repetitions); set up once per benchmark and keep only the current one.
Prepared& prepare(Backend b, int M, int N, int K, int T) {
  static Prepared cur;
  static std::map<std::string, double> verified;
  char key[128];
  std::snprintf(key, sizeof key, "%s/%d/%d/%d/%d", backend_name(b), M, N, K, T);
  if (cur.key != key) {
    cur.runner.reset();
    cur.key = key;
    cur.runner = make_runner(b, M, N, K, T);
    const auto t0 = Clock::now();
    cur.runner->run(0);  // first call: includes lazy JIT / thread start / scratchpad allocation
    cur.first_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    char vkey[128];
    std::snprintf(vkey, sizeof vkey, "%s/%d/%d/%d", backend_name(b), M, N, K);
    auto it = verified.find(vkey);
    if (it == verified.end()) {
      const double e = verify(*cur.runner);
      it = verified.emplace(vkey, e).first;
      std::fprintf(stderr, "verify %-18s M=%-4d N=%-6d K=%-5d rel_l2_err=%.3e  [%s]\n", backend_name(b), M, N, K, e,
                   cur.runner->impl.c_str());
    }
    cur.relerr = it->second;
  } else {
    openblas_set_num_threads(T);
    omp_set_num_threads(T);
  }
  return cur;
}

void bench_fn(benchmark::State& state, Backend b, int M, int N, int K, int T) {
  Prepared& p = prepare(b, M, N, K, T);
  Runner& r = *p.runner;
  std::size_t c = 0;
  for (auto _ : state) {
    c = (c + 1 == r.copies) ? 0 : c + 1;
    r.run(c);
    benchmark::DoNotOptimize(r.Y.data());
    benchmark::ClobberMemory();
  }
  const double flops = 2.0 * M * N * K;
  const double wbytes = static_cast<double>(N) * K * (is_bf16(b) ? 2 : 4);
  state.counters["GFLOPS"] = benchmark::Counter(flops / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["wGBps"] = benchmark::Counter(wbytes / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["relerr"] = p.relerr;
  state.counters["first_ms"] = p.first_ms;
  state.counters["create_ms"] = r.create_ms;
  state.counters["copies"] = static_cast<double>(r.copies);
  state.SetLabel(r.impl);
}

}  // namespace

int main(int argc, char** argv) {
  struct Shape {
    int N, K;
  };
  const Shape shapes[] = {{2048, 2048}, {576, 2048}, {1408, 2048}, {2048, 1408}, {32000, 512}, {512, 512}};
  const int Ms[] = {1, 4, 16, 64, 128, 512};
  const int Ts[] = {1, 2};

  const bool have_sbgemm = find_sbgemm() != nullptr;
  benchmark::AddCustomContext("openblas_corename", openblas_get_corename());
  benchmark::AddCustomContext("openblas_config", openblas_get_config());
  benchmark::AddCustomContext("openblas_sbgemm_symbol", have_sbgemm ? "present" : "absent");
  const dnnl_version_t* v = dnnl_version();
  char vbuf[128];
  std::snprintf(vbuf, sizeof vbuf, "%d.%d.%d cpu_runtime=%s", v->major, v->minor, v->patch,
                v->cpu_runtime == DNNL_RUNTIME_OMP          ? "OMP"
                : v->cpu_runtime == DNNL_RUNTIME_THREADPOOL ? "threadpool"
                                                            : "other");
  benchmark::AddCustomContext("dnnl_version", vbuf);
  benchmark::AddCustomContext("omp_max_threads", std::to_string(omp_get_max_threads()));
  std::fprintf(stderr, "openblas core=%s, sbgemm %s, dnnl %s\n", openblas_get_corename(),
               have_sbgemm ? "present" : "ABSENT (OpenBLAS built without BUILD_BFLOAT16)", vbuf);

  std::vector<Backend> backends = {Backend::OpenblasF32, Backend::OpenblasF32Gemv, Backend::DnnlF32,
                                   Backend::DnnlF32Rt,   Backend::DnnlF32Packed,   Backend::DnnlBf16,
                                   Backend::DnnlBf16Rt,  Backend::DnnlBf16Packed,  Backend::RefBf16};
  if (have_sbgemm) backends.insert(backends.begin() + 2, Backend::OpenblasBf16);

  for (Backend b : backends) {
    for (const Shape& s : shapes) {
      for (int M : Ms) {
        if (b == Backend::OpenblasF32Gemv && M != 1) continue;
        if (b == Backend::RefBf16 && M > 4) continue;
        for (int T : Ts) {
          char name[128];
          std::snprintf(name, sizeof name, "%s/M:%d/N:%d/K:%d/T:%d", backend_name(b), M, s.N, s.K, T);
          benchmark::RegisterBenchmark(name, bench_fn, b, M, s.N, s.K, T)->UseRealTime()->Unit(benchmark::kMicrosecond);
        }
      }
    }
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
