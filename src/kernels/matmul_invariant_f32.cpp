#if defined(__GNUC__) && !defined(__clang__)
// GCC 12 reports _mm512_undefined_epi32() inside its own intrinsics as maybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include "kernels/matmul_invariant_f32.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "kernels/avx512_common.h"
#include "kernels/matmul_small_batch_avx512.h"

namespace deepmoe {

namespace {

constexpr int64_t kPanel = 16;  // output features per panel: one AVX-512 vector

using PanelKey = std::tuple<const void*, int64_t, int64_t, WeightFormat>;

// Rows [first, first + count) of w into one panel, k-major: bf16 bits as they are (BF16 weights)
// or f32 values (every other format, dequantized).
template <typename T>
void fill_panel(const WeightMatrix& w, int64_t first, int64_t count, T* panel) {
  const int64_t cols = w.cols;
  if constexpr (std::is_same_v<T, uint16_t>) {
    const auto* bits = static_cast<const uint16_t*>(w.data) + first * cols;
    for (int64_t r = 0; r < count; ++r)
      for (int64_t k = 0; k < cols; ++k) panel[k * kPanel + r] = bits[r * cols + k];
  } else {
    thread_local std::vector<float> rows;
    rows.resize(size_t(kPanel * cols));
    dequantize_rows(w, first, count, rows.data());
    for (int64_t r = 0; r < count; ++r)
      for (int64_t k = 0; k < cols; ++k) panel[k * kPanel + r] = rows[size_t(r * cols + k)];
  }
}

template <typename T>
void pack_into(const WeightMatrix& w, AlignedVector<T>& out) {
  const int64_t panels = (w.rows + kPanel - 1) / kPanel;
  out.assign(size_t(panels * w.cols * kPanel), T(0));
  for (int64_t p = 0; p < panels; ++p) {
    const int64_t first = p * kPanel;
    fill_panel(w, first, std::min(kPanel, w.rows - first), out.data() + p * w.cols * kPanel);
  }
}

void pack(const WeightMatrix& w, PackedPanels& packed) {
  packed.rows = w.rows;
  packed.cols = w.cols;
  if (w.format == WeightFormat::BF16) pack_into(w, packed.halves);
  else pack_into(w, packed.values);
}

inline float widen(float value) { return value; }
inline float widen(uint16_t bits) { return bf16_to_f32(bits); }

// One row's outputs [lane_begin, lane_end) of a panel, the scalar way (the reference order).
template <typename T>
void panel_portable(const float* x, const T* panel, int64_t cols, float* y, int64_t lane_begin, int64_t lane_end) {
  for (int64_t lane = lane_begin; lane < lane_end; ++lane) {
    float partial[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t k = 0; k < cols; ++k) partial[k & 3] = std::fma(x[k], widen(panel[k * kPanel + lane]), partial[k & 3]);
    y[lane] = (partial[0] + partial[1]) + (partial[2] + partial[3]);
  }
}

DEEPMOE_AVX512 inline __m512 load_panel_row(const float* w) { return _mm512_load_ps(w); }
DEEPMOE_AVX512 inline __m512 load_panel_row(const uint16_t* w) {
  return widen_bf16(_mm256_load_si256(reinterpret_cast<const __m256i*>(w)));
}

template <int R, typename T>
DEEPMOE_AVX512 void panel_avx512(const float* x, int64_t x_stride, const T* panel, int64_t cols, float* y,
                                 int64_t y_stride, __mmask16 lanes) {
  __m512 acc[4][R];
  for (auto& phase : acc)
    for (auto& a : phase) a = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 4 <= cols; k += 4) {
    for (int phase = 0; phase < 4; ++phase) {
      const __m512 w = load_panel_row(panel + (k + phase) * kPanel);
      for (int r = 0; r < R; ++r)
        acc[phase][r] = _mm512_fmadd_ps(_mm512_set1_ps(x[r * x_stride + k + phase]), w, acc[phase][r]);
    }
  }
  for (int phase = 0; k < cols; ++k, ++phase) {
    const __m512 w = load_panel_row(panel + k * kPanel);
    for (int r = 0; r < R; ++r) acc[phase][r] = _mm512_fmadd_ps(_mm512_set1_ps(x[r * x_stride + k]), w, acc[phase][r]);
  }
  for (int r = 0; r < R; ++r) {
    const __m512 sum = _mm512_add_ps(_mm512_add_ps(acc[0][r], acc[1][r]), _mm512_add_ps(acc[2][r], acc[3][r]));
    _mm512_mask_storeu_ps(y + r * y_stride, lanes, sum);
  }
}

template <bool Avx512, typename T>
void run(const float* x, int64_t x_stride, int64_t n_rows, const PackedPanels& w, const T* panels, float* y,
         int64_t y_stride, int64_t row_begin, int64_t row_end) {
  for (int64_t p = row_begin / kPanel; p * kPanel < row_end; ++p) {
    const int64_t first = p * kPanel;
    const int64_t lane_begin = std::max(row_begin - first, int64_t(0)), lane_end = std::min(row_end - first, kPanel);
    const T* panel = panels + p * w.cols * kPanel;
    float* out = y + first;
    if constexpr (Avx512) {
      const __mmask16 lanes = __mmask16(((1u << lane_end) - 1) & ~((1u << lane_begin) - 1));
      switch (n_rows) {
        case 1: panel_avx512<1>(x, x_stride, panel, w.cols, out, y_stride, lanes); break;
        case 2: panel_avx512<2>(x, x_stride, panel, w.cols, out, y_stride, lanes); break;
        case 3: panel_avx512<3>(x, x_stride, panel, w.cols, out, y_stride, lanes); break;
        default: panel_avx512<4>(x, x_stride, panel, w.cols, out, y_stride, lanes); break;
      }
    } else {
      for (int64_t r = 0; r < n_rows; ++r)
        panel_portable(x + r * x_stride, panel, w.cols, out + r * y_stride, lane_begin, lane_end);
    }
  }
}

template <bool Avx512>
void run(const float* x, int64_t x_stride, int64_t n_rows, const PackedPanels& w, float* y, int64_t y_stride,
         int64_t row_begin, int64_t row_end) {
  if (!w.halves.empty()) return run<Avx512>(x, x_stride, n_rows, w, w.halves.data(), y, y_stride, row_begin, row_end);
  run<Avx512>(x, x_stride, n_rows, w, w.values.data(), y, y_stride, row_begin, row_end);
}

}  // namespace

const PackedPanels& packed_panels(const WeightMatrix& w) {
  static std::shared_mutex mutex;
  static std::map<PanelKey, std::unique_ptr<PackedPanels>> cache;
  // Each thread remembers what it has looked up, by data pointer (matrices that share one, row
  // slices at offset 0, are told apart by their shape): the shared lock, taken per product, cost
  // 18 % of a batched decode step in contention between two threads, and an ordered map's
  // comparisons of the whole key 3 %.
  struct Known {
    const PackedPanels* panels;
    WeightFormat format;
  };
  thread_local std::unordered_multimap<const void*, Known> known;
  const auto [first, last] = known.equal_range(w.data);
  for (auto it = first; it != last; ++it) {
    const Known& k = it->second;
    if (k.panels->rows == w.rows && k.panels->cols == w.cols && k.format == w.format) return *k.panels;
  }
  const PanelKey key{w.data, w.rows, w.cols, w.format};
  const PackedPanels* found = nullptr;
  {
    std::shared_lock lock(mutex);
    if (auto it = cache.find(key); it != cache.end()) found = it->second.get();
  }
  if (!found) {
    auto packed = std::make_unique<PackedPanels>();
    pack(w, *packed);
    std::unique_lock lock(mutex);
    found = cache.emplace(key, std::move(packed)).first->second.get();
  }
  known.emplace(w.data, Known{found, w.format});
  return *found;
}

void matmul_invariant_f32(const float* x, int64_t x_stride, int64_t n_rows, const PackedPanels& w, float* y,
                          int64_t y_stride, int64_t row_begin, int64_t row_end) {
  if (n_rows < 1 || n_rows > kSmallBatchMax) fail("matmul_invariant_f32: {} rows (1 to {})", n_rows, kSmallBatchMax);
  if (cpu_has_avx512()) return run<true>(x, x_stride, n_rows, w, y, y_stride, row_begin, row_end);
  run<false>(x, x_stride, n_rows, w, y, y_stride, row_begin, row_end);
}

void matmul_invariant_f32_portable(const float* x, int64_t x_stride, int64_t n_rows, const PackedPanels& w, float* y,
                                   int64_t y_stride, int64_t row_begin, int64_t row_end) {
  run<false>(x, x_stride, n_rows, w, y, y_stride, row_begin, row_end);
}

}  // namespace deepmoe
