#include "kernels/matmul.h"

#include <cblas.h>

#include <algorithm>
#include <vector>

#include "core/error.h"
#include "kernels/ggml_blocks.h"
#include "kernels/matmul_ggml_gemm.h"
#include "kernels/matmul_invariant_f32.h"
#include "kernels/matmul_q4_vnni.h"
#include "kernels/matmul_q8_vnni.h"
#include "kernels/matmul_quant.h"
#include "kernels/quantize.h"

namespace deepmoe {

namespace {
MatmulObserver g_observer;
bool g_batch_invariant = false;
}  // namespace

void set_matmul_observer(MatmulObserver observer) { g_observer = std::move(observer); }
void set_batch_invariant_kernels(bool on) { g_batch_invariant = on; }
bool batch_invariant_kernels() { return g_batch_invariant; }

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

void gemm_f32(bool transpose_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
              int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, transpose_b ? CblasTrans : CblasNoTrans, blasint(m),
              blasint(n), blasint(k), alpha, a, blasint(lda), b, blasint(ldb), beta, c, blasint(ldc));
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

// The activations as a weight's product reads them, made once per call: as they are; rounded to
// Q8_0 (the ggml formats, computed as llama.cpp computes them); int8 blocks for the VNNI Q4_0
// kernel or the ggml formats' integer GEMM; or uint8 for W8A8 (with their f32 values for sgemm).
struct PreparedInput {
  const float* x = nullptr;
  int64_t x_stride = 0;
  std::vector<float> rounded;
  bool q4 = false;
  Q4Activations q4_values;
  bool q8 = false;
  Q8Activations q8_values;
  bool ggml_gemm = false;
  GgmlGemmActivations ggml_gemm_values;
  bool w8a8 = false;
  QuantizedActivations w8a8_values;
};

void prepare_input(const float* x, int64_t x_stride, int64_t n_rows, const WeightMatrix& w, PreparedInput& p) {
  p.x = x;
  p.x_stride = x_stride;
  p.q4 = p.q8 = p.w8a8 = p.ggml_gemm = false;
  const bool vnni = !portable_quant_kernels_forced();  // tests and benchmarks can force the portable kernels
  if (w.activation_quant != ActivationQuant::None) {
    p.w8a8 = true;
    const Uint8Range range{w.activation_scale, w.activation_zero_point};
    quantize_activations(x, n_rows, x_stride, w.cols, w.activation_quant == ActivationQuant::Static ? &range : nullptr,
                         p.w8a8_values);
    if (n_rows > kSmallBatchMax) {
      p.rounded.resize(size_t(n_rows * w.cols));
      dequantize_activations(p.w8a8_values, n_rows, w.cols, p.rounded.data());
      p.x = p.rounded.data();
      p.x_stride = w.cols;
    }
  } else if (vnni && n_rows <= kSmallBatchMax && q8_vnni_applies(w)) {
    p.q8 = true;
    prepare_q8_activations(x, x_stride, n_rows, w.cols, p.q8_values);
  } else if (vnni && n_rows <= kSmallBatchMax && q4_vnni_applies(w)) {
    p.q4 = true;
    prepare_q4_activations(x, x_stride, n_rows, w.cols, p.q4_values);
  } else if (vnni && n_rows > kSmallBatchMax && ggml_gemm_applies(w)) {
    p.ggml_gemm = true;
    prepare_ggml_gemm_activations(x, x_stride, n_rows, w, p.ggml_gemm_values);
  } else if (w.format == WeightFormat::Q8_0 || w.format == WeightFormat::Q4_0) {
    p.rounded.resize(size_t(n_rows * w.cols));
    for (int64_t m = 0; m < n_rows; ++m) round_activations_q8_0(x + m * x_stride, w.cols, p.rounded.data() + m * w.cols);
    p.x = p.rounded.data();
    p.x_stride = w.cols;
  }
}

// The panels batch-invariant mode multiplies w by, or nullptr where it uses the other kernels
// (looked up once per product: per block it cost 4 % of a batched decode step).
const PackedPanels* invariant_panels(const WeightMatrix& w) {
  const bool panels = g_batch_invariant && (w.format == WeightFormat::F32 || w.format == WeightFormat::BF16);
  return panels ? &packed_panels(w) : nullptr;
}

void run_rows(const PreparedInput& p, int64_t n_rows, const WeightMatrix& w, const PackedPanels* panels, float* y,
              int64_t y_stride, int64_t row_begin, int64_t row_end) {
  if (row_begin >= row_end || n_rows == 0) return;
  if (panels) return matmul_invariant_f32(p.x, p.x_stride, n_rows, *panels, y, y_stride, row_begin, row_end);
  if (p.w8a8 && n_rows <= kSmallBatchMax)
    return int8_u8_dot_rows(p.w8a8_values, n_rows, w, y, y_stride, row_begin, row_end);
  if (p.q4) return q4_dot_rows_vnni(p.q4_values, w, y, y_stride, row_begin, row_end);
  if (p.q8) return q8_dot_rows_vnni(p.q8_values, w, y, y_stride, row_begin, row_end);
  if (p.ggml_gemm) return ggml_gemm_rows(p.ggml_gemm_values, w, y, y_stride, row_begin, row_end);
  const float* x = p.x;
  const int64_t x_stride = p.x_stride;
  if (n_rows == 1 && w.format == WeightFormat::F32 && !g_batch_invariant) {
    // Measured (docs/benchmarks.md): OpenBLAS sgemv streams f32 weights faster than our kernel.
    const WeightMatrix part = w.row_slice(row_begin, row_end - row_begin);
    cblas_sgemv(CblasRowMajor, CblasNoTrans, blasint(part.rows), blasint(part.cols), 1.0f,
                static_cast<const float*>(part.data), blasint(part.cols), x, 1, 0.0f, y + row_begin, 1);
    return;
  }
  if (n_rows <= kSmallBatchMax) {
    if (w.is_quantized()) return quant_dot_rows(x, x_stride, n_rows, w, y, y_stride, row_begin, row_end);
    return matmul_small_batch(x, x_stride, n_rows, w, y, y_stride, row_begin, row_end);
  }
  if (w.format == WeightFormat::F32) {
    const WeightMatrix part = w.row_slice(row_begin, row_end - row_begin);
    gemm_f32(true, n_rows, part.rows, part.cols, 1.0f, x, x_stride, static_cast<const float*>(part.data), part.cols,
             0.0f, y + row_begin, y_stride);
    return;
  }
  matmul_widened_rows(x, x_stride, n_rows, w, y, y_stride, row_begin, row_end);
}

}  // namespace

void matmul_rows(const float* x, int64_t x_stride, int64_t n_rows, const WeightMatrix& w, float* y,
                 int64_t y_stride, int64_t row_begin, int64_t row_end) {
  if (row_begin >= row_end || n_rows == 0) return;
  if (x_stride < 0) x_stride = w.cols;
  if (y_stride < 0) y_stride = w.rows;
  thread_local PreparedInput prepared;
  const PackedPanels* panels = invariant_panels(w);
  const int64_t group = g_batch_invariant ? kSmallBatchMax : n_rows;
  for (int64_t first = 0; first < n_rows; first += group) {
    const int64_t count = std::min(group, n_rows - first);
    prepare_input(x + first * x_stride, x_stride, count, w, prepared);
    run_rows(prepared, count, w, panels, y + first * y_stride, y_stride, row_begin, row_end);
  }
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

void matmul(ThreadPool& pool, const float* x, int64_t n_rows, const WeightMatrix& w, float* y,
            int64_t x_stride, int64_t y_stride) {
  const MatmulJob job{x, n_rows, &w, y, x_stride, y_stride};
  matmul_batch(pool, std::span(&job, 1));
}

void matmul_batch(ThreadPool& pool, std::span<const MatmulJob> jobs) {
  // Each job's rows as groups: one group of all its rows, or in batch-invariant mode groups of at
  // most kSmallBatchMax rows (each goes through the streaming kernel, whose per-row arithmetic
  // does not depend on the group). A block of output features runs all groups of its job in turn,
  // so the weights of the block are read from memory once, then from cache.
  // (References to thread_locals: the workers must read this thread's buffers, not their own.)
  thread_local std::vector<MatmulJob> caller_groups;
  std::vector<MatmulJob>& groups = caller_groups;
  thread_local std::vector<size_t> caller_first_group;  // of each job
  std::vector<size_t>& first_group = caller_first_group;
  groups.clear();
  first_group.assign(1, 0);
  for (MatmulJob job : jobs) {
    if (job.x_stride < 0) job.x_stride = job.w->cols;
    if (job.y_stride < 0) job.y_stride = job.w->rows;
    const int64_t group_rows = g_batch_invariant ? kSmallBatchMax : std::max<int64_t>(job.n_rows, 1);
    for (int64_t first = 0; first < job.n_rows; first += group_rows)
      groups.push_back({job.x + first * job.x_stride, std::min(group_rows, job.n_rows - first), job.w,
                        job.y + first * job.y_stride, job.x_stride, job.y_stride});
    first_group.push_back(groups.size());
  }
  // Prepared once here rather than in every thread's blocks, and once for consecutive groups with
  // the same input and weight format (an MLP's gate and up projections).
  thread_local std::vector<PreparedInput> caller_prepared;
  std::vector<PreparedInput>& prepared = caller_prepared;
  if (prepared.size() < groups.size()) prepared.resize(groups.size());
  thread_local std::vector<size_t> caller_input_of;  // the group whose prepared input each group reads
  std::vector<size_t>& input_of = caller_input_of;
  input_of.assign(groups.size(), 0);
  thread_local std::vector<int64_t> caller_first_block;
  std::vector<int64_t>& first_block = caller_first_block;  // of each job, in the batch's numbering
  first_block.assign(jobs.size() + 1, 0);
  thread_local std::vector<const PackedPanels*> caller_panels;  // of each job
  std::vector<const PackedPanels*>& panels = caller_panels;
  panels.assign(jobs.size(), nullptr);
  const MatmulJob* last_prepared = nullptr;
  bool decode = true;  // every group small enough for the streaming kernels
  for (size_t j = 0; j < jobs.size(); ++j) {
    const MatmulJob& job = jobs[j];
    const int64_t rows = job.n_rows == 0 ? 1 : block_rows(groups[first_group[j]].n_rows);
    const int64_t blocks = job.n_rows == 0 ? 0 : (job.w->rows + rows - 1) / rows;
    first_block[j + 1] = first_block[j] + blocks;
    if (blocks == 0) continue;
    panels[j] = invariant_panels(*job.w);
    if (g_observer) g_observer(*job.w, job.x, job.n_rows, job.x_stride < 0 ? job.w->cols : job.x_stride);
    for (size_t g = first_group[j]; g < first_group[j + 1]; ++g) {
      const MatmulJob& group = groups[g];
      decode = decode && group.n_rows <= kSmallBatchMax;
      if (last_prepared && same_prepared_input(*last_prepared, group)) {
        input_of[g] = input_of[size_t(last_prepared - groups.data())];
        continue;
      }
      prepare_input(group.x, group.x_stride, group.n_rows, *group.w, prepared[g]);
      input_of[g] = g;
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
  const int64_t grain = decode ? (first_block.back() + pool.size() - 1) / pool.size() : 1;
  pool.parallel_for(first_block.back(), grain, [&](int64_t begin, int64_t end) {
    size_t j = size_t(std::upper_bound(first_block.begin(), first_block.end(), begin) - first_block.begin()) - 1;
    for (int64_t b = begin; b < end; ++b) {
      while (b >= first_block[j + 1]) ++j;
      const MatmulJob& job = jobs[j];
      const int64_t rows = block_rows(groups[first_group[j]].n_rows), local = b - first_block[j];
      for (size_t g = first_group[j]; g < first_group[j + 1]; ++g)
        run_rows(prepared[input_of[g]], groups[g].n_rows, *job.w, panels[j], groups[g].y, groups[g].y_stride,
                 local * rows, std::min(job.w->rows, (local + 1) * rows));
    }
  });
}

}  // namespace deepmoe
