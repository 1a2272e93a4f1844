#include "kernels/matmul.h"

#include <cblas.h>

#include <algorithm>
#include <variant>
#include <vector>

#include "core/error.h"
#include "kernels/gemm_bf16.h"
#include "kernels/ggml_blocks.h"
#include "kernels/matmul_ggml_gemm.h"
#include "kernels/matmul_invariant_f32.h"
#include "kernels/matmul_q4_vnni.h"
#include "kernels/matmul_q8_vnni.h"
#include "kernels/matmul_quant.h"
#include "kernels/quantize.h"

namespace deepmoe {

// The pool owns the cores: OpenBLAS only ever runs single-threaded inside one of our slices.
// Its own threads would spin after each call and steal the core our next loop needs.
std::string gemm_library_name() { return std::string("OpenBLAS ") + openblas_get_corename(); }

void use_single_threaded_blas() { openblas_set_num_threads(1); }

void gemm_f32_ex(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                 int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  cblas_sgemm(CblasRowMajor, transpose_a ? CblasTrans : CblasNoTrans, transpose_b ? CblasTrans : CblasNoTrans,
              blasint(m), blasint(n), blasint(k), alpha, a, blasint(lda), b, blasint(ldb), beta, c, blasint(ldc));
}

void gemm_f32(bool transpose_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
              const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, transpose_b ? CblasTrans : CblasNoTrans, blasint(m), blasint(n), blasint(k),
              alpha, a, blasint(lda), b, blasint(ldb), beta, c, blasint(ldc));
}

namespace {

// Output features per GEMM call: many blocks per matrix keep two or three threads balanced,
// and 128 columns of C keep OpenBLAS's packing of x a small share of the work.
constexpr int64_t kGemmBlockRows = 128;

// Floats of a BF16 or quantized weight widened per sgemm call: big enough to keep sgemm
// efficient, small enough (1 MiB) to stay in L2 while sgemm reads it.
constexpr int64_t kPanelFloats = int64_t(1) << 18;

// y[:, row_begin:row_end] for weights that are not F32, through f32 sgemm, a panel of rows at a
// time widened to f32.
void matmul_widened_rows(const float* x, int64_t x_stride, int64_t n_rows, const WeightMatrix& w, float* y,
                         int64_t y_stride, int64_t row_begin, int64_t row_end) {
  const int64_t panel_rows = std::clamp<int64_t>(kPanelFloats / w.cols / 16 * 16, 16, kGemmBlockRows);
  thread_local std::vector<float> panel;
  panel.resize(size_t(panel_rows * w.cols));
  for (int64_t first = row_begin; first < row_end; first += panel_rows) {
    const int64_t count = std::min(panel_rows, row_end - first);
    dequantize_rows(w, first, count, panel.data());
    gemm_f32(true, n_rows, count, w.cols, 1.0f, x, x_stride, panel.data(), w.cols, 0.0f, y + first, y_stride);
  }
}

// The kernel a product runs, chosen in one place (choose_kernel) from the weight format, the
// number of activation rows, the context's precision and batch invariance, and the CPU.
enum class Kernel : uint8_t {
  InvariantPanels,  // batch-invariant F32/BF16: packed panels, per-row arithmetic fixed
  Sgemv,            // F32, one row: OpenBLAS sgemv (measured faster than ours for f32)
  StreamFloat,      // F32/BF16, up to kSmallBatchMax rows: our streaming kernel
  StreamQuant,      // quantized, up to kSmallBatchMax rows (ggml formats see x rounded to Q8_0)
  Q8Vnni,           // Q8_0, up to kSmallBatchMax rows, AVX-512 VNNI
  Q4Vnni,           // Q4_0, likewise
  W8A8Dot,          // Int8 with quantized activations, up to kSmallBatchMax rows
  GgmlGemm,         // Q8_0/Q4_0, more rows, VNNI integer GEMM
  SgemmF32,         // F32, more rows: OpenBLAS sgemm on the weights in place
  SgemmWidened,     // other formats, more rows: sgemm on panels widened to f32
  GemmBf16,         // GemmPrecision::BF16 (training), BF16 weights: bf16 operands, f32 accumulation (oneDNN)
};

Kernel choose_kernel(const Context& ctx, const WeightMatrix& w, int64_t n_rows) {
  const bool small = n_rows <= kSmallBatchMax, vnni = !ctx.options().portable_quant_kernels;
  // Mixed precision multiplies the weights held in bf16 in bf16; f32 ones (the router) stay f32.
  if (ctx.precision() == GemmPrecision::BF16 && w.format == WeightFormat::BF16) return Kernel::GemmBf16;
  if (w.activation_quant != ActivationQuant::None) return small ? Kernel::W8A8Dot : Kernel::SgemmWidened;
  if (ctx.batch_invariant() && !w.is_quantized()) return Kernel::InvariantPanels;
  if (small) {
    if (vnni && q8_vnni_applies(w)) return Kernel::Q8Vnni;
    if (vnni && q4_vnni_applies(w)) return Kernel::Q4Vnni;
    if (w.is_quantized()) return Kernel::StreamQuant;
    if (n_rows == 1 && w.format == WeightFormat::F32 && !ctx.batch_invariant()) return Kernel::Sgemv;
    return Kernel::StreamFloat;
  }
  if (vnni && ggml_gemm_applies(w)) return Kernel::GgmlGemm;
  return w.format == WeightFormat::F32 ? Kernel::SgemmF32 : Kernel::SgemmWidened;
}

// The activations as the chosen kernel reads them, made once per product: as they are; rounded
// to Q8_0 (the ggml formats, as llama.cpp computes them) or through W8A8's uint8 and back (f32
// values for sgemm); int8 blocks for the VNNI kernels or the integer GEMM; uint8 for W8A8; bf16.
struct RowsAsGiven {};
struct RoundedRows {
  std::vector<float> values;
};
struct Bf16Rows {
  std::vector<uint16_t> bits;
};
struct PreparedInput {
  Kernel kernel = Kernel::StreamFloat;
  const float* x = nullptr;  // the f32 rows the kernel reads (given or rounded)
  int64_t x_stride = 0;
  std::variant<RowsAsGiven, RoundedRows, Q4Activations, Q8Activations, GgmlGemmActivations, QuantizedActivations,
               Bf16Rows>
      values;
};

template <typename T>
T& hold(PreparedInput& p) {
  if (!std::holds_alternative<T>(p.values)) p.values.emplace<T>();  // keeps a buffer's capacity across calls
  return std::get<T>(p.values);
}

void prepare_input(const Context& ctx, const float* x, int64_t x_stride, int64_t n_rows, const WeightMatrix& w,
                   PreparedInput& p) {
  p.kernel = choose_kernel(ctx, w, n_rows);
  p.x = x;
  p.x_stride = x_stride;
  auto round_q8_0 = [&] {
    std::vector<float>& rounded = hold<RoundedRows>(p).values;
    rounded.resize(size_t(n_rows * w.cols));
    for (int64_t m = 0; m < n_rows; ++m) round_activations_q8_0(x + m * x_stride, w.cols, rounded.data() + m * w.cols);
    p.x = rounded.data();
    p.x_stride = w.cols;
  };
  switch (p.kernel) {
    case Kernel::W8A8Dot:
    case Kernel::SgemmWidened:
      if (w.activation_quant != ActivationQuant::None) {
        QuantizedActivations& q = hold<QuantizedActivations>(p);
        const Uint8Range range{w.activation_scale, w.activation_zero_point};
        quantize_activations(x, n_rows, x_stride, w.cols,
                             w.activation_quant == ActivationQuant::Static ? &range : nullptr, q);
        if (p.kernel == Kernel::SgemmWidened) {  // sgemm reads the values W8A8 rounded x to
          std::vector<float> rounded(size_t(n_rows * w.cols));
          dequantize_activations(q, n_rows, w.cols, rounded.data());
          p.values.emplace<RoundedRows>().values = std::move(rounded);
          p.x = std::get<RoundedRows>(p.values).values.data();
          p.x_stride = w.cols;
        }
      } else if (w.format == WeightFormat::Q8_0 || w.format == WeightFormat::Q4_0) {
        round_q8_0();
      }
      return;
    case Kernel::StreamQuant:
      if (w.format == WeightFormat::Q8_0 || w.format == WeightFormat::Q4_0) round_q8_0();
      return;
    case Kernel::Q8Vnni: return prepare_q8_activations(x, x_stride, n_rows, w.cols, hold<Q8Activations>(p));
    case Kernel::Q4Vnni: return prepare_q4_activations(x, x_stride, n_rows, w.cols, hold<Q4Activations>(p));
    case Kernel::GgmlGemm: return prepare_ggml_gemm_activations(x, x_stride, n_rows, w, hold<GgmlGemmActivations>(p));
    case Kernel::GemmBf16: {
      std::vector<uint16_t>& bits = hold<Bf16Rows>(p).bits;
      bits.resize(size_t(n_rows * w.cols));
      for (int64_t m = 0; m < n_rows; ++m)
        convert_f32_to_bf16(x + m * x_stride, bits.data() + m * w.cols, size_t(w.cols));
      return;
    }
    case Kernel::InvariantPanels:  // the weights' panels: weights_prepared
    case Kernel::Sgemv:
    case Kernel::StreamFloat:
    case Kernel::SgemmF32: return;
  }
}

// What the chosen kernel needs of the weights beyond the matrix: InvariantPanels' packed panels
// (looked up once per product: per block it cost 4 % of a batched decode step). Per weight, while
// a prepared input may serve several weights (an MLP's gate and up projections).
const PackedPanels* weights_prepared(const Context& ctx, const WeightMatrix& w, int64_t n_rows) {
  return choose_kernel(ctx, w, n_rows) == Kernel::InvariantPanels ? &packed_panels(w) : nullptr;
}

void run_rows(const Context& ctx, const PreparedInput& p, const PackedPanels* panels, int64_t n_rows,
              const WeightMatrix& w, float* y, int64_t y_stride, int64_t row_begin, int64_t row_end) {
  if (row_begin >= row_end || n_rows == 0) return;
  const bool portable = ctx.options().portable_quant_kernels;
  switch (p.kernel) {
    case Kernel::InvariantPanels:
      return matmul_invariant_f32(p.x, p.x_stride, n_rows, *panels, y, y_stride, row_begin, row_end);
    case Kernel::W8A8Dot:
      return int8_u8_dot_rows(std::get<QuantizedActivations>(p.values), n_rows, w, y, y_stride, row_begin, row_end,
                              portable);
    case Kernel::Q4Vnni: return q4_dot_rows_vnni(std::get<Q4Activations>(p.values), w, y, y_stride, row_begin, row_end);
    case Kernel::Q8Vnni: return q8_dot_rows_vnni(std::get<Q8Activations>(p.values), w, y, y_stride, row_begin, row_end);
    case Kernel::GgmlGemm:
      return ggml_gemm_rows(std::get<GgmlGemmActivations>(p.values), w, y, y_stride, row_begin, row_end);
    case Kernel::Sgemv: {
      const WeightMatrix part = w.row_slice(row_begin, row_end - row_begin);
      cblas_sgemv(CblasRowMajor, CblasNoTrans, blasint(part.rows), blasint(part.cols), 1.0f,
                  static_cast<const float*>(part.data), blasint(part.cols), p.x, 1, 0.0f, y + row_begin, 1);
      return;
    }
    case Kernel::StreamQuant:
      return quant_dot_rows(p.x, p.x_stride, n_rows, w, y, y_stride, row_begin, row_end, portable);
    case Kernel::StreamFloat: return matmul_small_batch(p.x, p.x_stride, n_rows, w, y, y_stride, row_begin, row_end);
    case Kernel::SgemmF32: {
      const WeightMatrix part = w.row_slice(row_begin, row_end - row_begin);
      gemm_f32(true, n_rows, part.rows, part.cols, 1.0f, p.x, p.x_stride, static_cast<const float*>(part.data),
               part.cols, 0.0f, y + row_begin, y_stride);
      return;
    }
    case Kernel::SgemmWidened: return matmul_widened_rows(p.x, p.x_stride, n_rows, w, y, y_stride, row_begin, row_end);
    case Kernel::GemmBf16: {
      const uint16_t* wb = static_cast<const uint16_t*>(w.data) + row_begin * w.cols;
      gemm_bf16(false, true, n_rows, row_end - row_begin, w.cols, std::get<Bf16Rows>(p.values).bits.data(), w.cols, wb,
                w.cols, false, y + row_begin, y_stride);
      return;
    }
  }
}

}  // namespace

void matmul_rows(const Context& ctx, const float* x, int64_t x_stride, int64_t n_rows, const WeightMatrix& w, float* y,
                 int64_t y_stride, int64_t row_begin, int64_t row_end) {
  if (row_begin >= row_end || n_rows == 0) return;
  if (x_stride < 0) x_stride = w.cols;
  if (y_stride < 0) y_stride = w.rows;
  thread_local PreparedInput prepared;  // this runs on the pool's threads, each with its own
  const int64_t group = ctx.batch_invariant() ? kSmallBatchMax : n_rows;
  for (int64_t first = 0; first < n_rows; first += group) {
    const int64_t count = std::min(group, n_rows - first);
    prepare_input(ctx, x + first * x_stride, x_stride, count, w, prepared);
    run_rows(ctx, prepared, weights_prepared(ctx, w, count), count, w, y + first * y_stride, y_stride, row_begin,
             row_end);
  }
}

// The buffers of one matmul_batch call, kept by the calling thread's context so a step allocates
// nothing; the pool's threads read them during the call.
struct MatmulScratch {
  std::vector<MatmulJob> groups;
  std::vector<size_t> first_group;  // of each job
  std::vector<PreparedInput> prepared;
  std::vector<size_t> input_of;             // the group whose prepared input each group reads
  std::vector<int64_t> first_block;         // of each job, in the batch's numbering
  std::vector<const PackedPanels*> panels;  // of each job
};

// Context's members live here: they own a MatmulScratch, which only matmul knows.
Context::Context(int n_threads, ContextOptions options)
    : owned_pool_(std::make_unique<ThreadPool>(n_threads)),
      pool_(owned_pool_.get()),
      options_(std::move(options)),
      scratch_(std::make_unique<MatmulScratch>()) {
  use_single_threaded_blas();
}

Context::Context(ThreadPool& pool, ContextOptions options)
    : pool_(&pool), options_(std::move(options)), scratch_(std::make_unique<MatmulScratch>()) {}

Context::Context(Context&&) noexcept = default;
Context::~Context() = default;

// Not through Context(int): that sets the GEMM library's thread count, a process-wide call, while
// this runs on the pool's threads in the middle of other products.
Context Context::on_this_thread() const {
  Context serial(*pool_, options_);
  serial.owned_pool_ = std::make_unique<ThreadPool>(1);
  serial.pool_ = serial.owned_pool_.get();
  return serial;
}

namespace {
// Output features per block: 16 for decode (balances two or three threads on small experts),
// kGemmBlockRows for GEMM.
int64_t block_rows(int64_t n_rows) { return n_rows <= kSmallBatchMax ? 16 : kGemmBlockRows; }

// Whether b's input, prepared for b's weights, is exactly a's (prepare_input depends on the
// activations, their row count and the weights' format and width only; W8A8's static range is
// per weight, so those are never shared).
bool same_prepared_input(const MatmulJob& a, const MatmulJob& b) {
  return a.x == b.x && a.n_rows == b.n_rows && a.x_stride == b.x_stride && a.w->format == b.w->format &&
         a.w->cols == b.w->cols && a.w->activation_quant == ActivationQuant::None &&
         b.w->activation_quant == ActivationQuant::None;
}
}  // namespace

void matmul(const Context& ctx, const float* x, int64_t n_rows, const WeightMatrix& w, float* y, int64_t x_stride,
            int64_t y_stride) {
  const MatmulJob job{x, n_rows, &w, y, x_stride, y_stride};
  matmul_batch(ctx, std::span(&job, 1));
}

void matmul_batch(const Context& ctx, std::span<const MatmulJob> jobs) {
  // Each job's rows as groups: one group of all its rows, or in batch-invariant mode groups of at
  // most kSmallBatchMax rows (each goes through the streaming kernel, whose per-row arithmetic
  // does not depend on the group). A block of output features runs all groups of its job in turn,
  // so the weights of the block are read from memory once, then from cache.
  MatmulScratch& s = ctx.matmul_scratch();
  s.groups.clear();
  s.first_group.assign(1, 0);
  for (MatmulJob job : jobs) {
    if (job.x_stride < 0) job.x_stride = job.w->cols;
    if (job.y_stride < 0) job.y_stride = job.w->rows;
    const int64_t group_rows = ctx.batch_invariant() ? kSmallBatchMax : std::max<int64_t>(job.n_rows, 1);
    for (int64_t first = 0; first < job.n_rows; first += group_rows)
      s.groups.push_back({job.x + first * job.x_stride, std::min(group_rows, job.n_rows - first), job.w,
                          job.y + first * job.y_stride, job.x_stride, job.y_stride});
    s.first_group.push_back(s.groups.size());
  }
  // Prepared once here rather than in every thread's blocks, and once for consecutive groups with
  // the same input and weight format (an MLP's gate and up projections).
  if (s.prepared.size() < s.groups.size()) s.prepared.resize(s.groups.size());
  s.input_of.assign(s.groups.size(), 0);
  s.first_block.assign(jobs.size() + 1, 0);
  s.panels.assign(jobs.size(), nullptr);
  const MatmulJob* last_prepared = nullptr;
  bool decode = true;  // every group small enough for the streaming kernels
  for (size_t j = 0; j < jobs.size(); ++j) {
    const MatmulJob& job = jobs[j];
    const int64_t rows = job.n_rows == 0 ? 1 : block_rows(s.groups[s.first_group[j]].n_rows);
    const int64_t blocks = job.n_rows == 0 ? 0 : (job.w->rows + rows - 1) / rows;
    s.first_block[j + 1] = s.first_block[j] + blocks;
    if (blocks == 0) continue;
    s.panels[j] = weights_prepared(ctx, *job.w, s.groups[s.first_group[j]].n_rows);
    if (ctx.options().observer)
      ctx.options().observer(*job.w, job.x, job.n_rows, job.x_stride < 0 ? job.w->cols : job.x_stride);
    for (size_t g = s.first_group[j]; g < s.first_group[j + 1]; ++g) {
      const MatmulJob& group = s.groups[g];
      decode = decode && group.n_rows <= kSmallBatchMax;
      if (last_prepared && same_prepared_input(*last_prepared, group)) {
        s.input_of[g] = s.input_of[size_t(last_prepared - s.groups.data())];
        continue;
      }
      prepare_input(ctx, group.x, group.x_stride, group.n_rows, *group.w, s.prepared[g]);
      s.input_of[g] = g;
      last_prepared = &group;
    }
  }
  // Each thread takes a run of fixed-size blocks of output features (rows of W) and streams only
  // its part of W. Library calls see the same block shapes whatever the thread count, so results
  // are bit-identical across thread counts (BLAS kernels round differently on different tails).
  // Decode takes one run per thread: each streams one contiguous piece of W, its prefetches
  // running ahead inside it. (Runs of a sixteenth, the pool's default, cut two threads' DRAM
  // speed on one 3072 × 2048 matrix from 72 to 49 GB/s at Q8_0, 65 to 54 at Q4_0: every run's
  // end prefetched rows the other thread reads, and each new run restarted the streams.)
  ThreadPool& pool = ctx.pool();
  const int64_t grain = decode ? (s.first_block.back() + pool.size() - 1) / pool.size() : 1;
  pool.parallel_for(s.first_block.back(), grain, [&](int64_t begin, int64_t end) {
    size_t j = size_t(std::upper_bound(s.first_block.begin(), s.first_block.end(), begin) - s.first_block.begin()) - 1;
    for (int64_t b = begin; b < end; ++b) {
      while (b >= s.first_block[j + 1]) ++j;
      const MatmulJob& job = jobs[j];
      const int64_t rows = block_rows(s.groups[s.first_group[j]].n_rows), local = b - s.first_block[j];
      for (size_t g = s.first_group[j]; g < s.first_group[j + 1]; ++g)
        run_rows(ctx, s.prepared[s.input_of[g]], s.panels[j], s.groups[g].n_rows, *job.w, s.groups[g].y,
                 s.groups[g].y_stride, local * rows, std::min(job.w->rows, (local + 1) * rows));
    }
  });
}

}  // namespace deepmoe
