#include "train/layers.h"

#include <cmath>

#include "kernels/gemm_bf16.h"
#include "core/error.h"
#include "kernels/matmul.h"

namespace deepmoe::train {

namespace {
ThreadPool* g_pool = nullptr;
thread_local bool t_serial = false;
GemmPrecision g_precision = GemmPrecision::F32;
const Bf16Weights* g_bf16_weights = nullptr;
// Rows per GEMM block: big enough for BLAS efficiency, small enough to balance two threads.
constexpr int64_t kRowBlock = 64;
}  // namespace

void set_training_pool(ThreadPool* pool) { g_pool = pool; }

ThreadPool& training_pool() {
  thread_local ThreadPool single(1);
  return g_pool != nullptr && !t_serial ? *g_pool : single;
}

SerialLayers::SerialLayers() : previous_(t_serial) { t_serial = true; }
SerialLayers::~SerialLayers() { t_serial = previous_; }

void set_training_precision(GemmPrecision precision) { g_precision = precision; }
void set_bf16_weights(const Bf16Weights* weights) { g_bf16_weights = weights; }

void Bf16Weights::refresh(const float* values, size_t count) {
  base_ = values;
  bits_.resize(count);
  constexpr int64_t kChunk = 1 << 16;
  training_pool().parallel_for(int64_t(count), kChunk, [&](int64_t begin, int64_t end) {
    convert_f32_to_bf16(values + begin, bits_.data() + begin, size_t(end - begin));
  });
}

const uint16_t* Bf16Weights::find(const float* w, size_t count) const {
  if (base_ == nullptr || w < base_ || w + count > base_ + bits_.size()) return nullptr;
  return bits_.data() + (w - base_);
}

namespace {

// rows × cols f32 → bf16 into `out`, split over the pool.
const uint16_t* to_bf16(const float* x, int64_t rows, int64_t cols, std::vector<uint16_t>& out) {
  out.resize(size_t(rows * cols));
  training_pool().parallel_for(rows, kRowBlock, [&](int64_t begin, int64_t end) {
    convert_f32_to_bf16(x + begin * cols, out.data() + begin * cols, size_t((end - begin) * cols));
  });
  return out.data();
}

const uint16_t* weight_bf16(const float* w, int64_t out, int64_t in, std::vector<uint16_t>& scratch) {
  const uint16_t* found = g_bf16_weights != nullptr ? g_bf16_weights->find(w, size_t(out * in)) : nullptr;
  return found != nullptr ? found : to_bf16(w, out, in, scratch);
}

// Buffers of the calling thread (layers inside a parallel region run on several threads at once).
struct Bf16Scratch {
  std::vector<uint16_t> x, dy, w;
};
Bf16Scratch& bf16_scratch() {
  thread_local Bf16Scratch scratch;
  return scratch;
}

void linear_forward_bf16(const float* x, int64_t n, const float* w, int64_t out, int64_t in, float* y) {
  Bf16Scratch& scratch = bf16_scratch();
  const uint16_t* xb = to_bf16(x, n, in, scratch.x);
  const uint16_t* wb = weight_bf16(w, out, in, scratch.w);
  training_pool().parallel_for(n, kRowBlock, [&](int64_t begin, int64_t end) {
    gemm_bf16(false, true, end - begin, out, in, xb + begin * in, in, wb, in, false, y + begin * out, out);
  });
}

void linear_backward_bf16(const float* x, const float* dy, int64_t n, const float* w, int64_t out, int64_t in,
                          float* dx, float* dw) {
  Bf16Scratch& scratch = bf16_scratch();
  const uint16_t* dyb = to_bf16(dy, n, out, scratch.dy);
  const uint16_t* xb = to_bf16(x, n, in, scratch.x);
  if (dx != nullptr) {
    const uint16_t* wb = weight_bf16(w, out, in, scratch.w);
    training_pool().parallel_for(n, kRowBlock, [&](int64_t begin, int64_t end) {
      gemm_bf16(false, false, end - begin, in, out, dyb + begin * out, out, wb, in, true, dx + begin * in, in);
    });
  }
  training_pool().parallel_for(out, kRowBlock, [&](int64_t begin, int64_t end) {
    gemm_bf16(true, false, end - begin, in, n, dyb + begin, out, xb, in, true, dw + begin * in, in);
  });
}

}  // namespace

void linear_forward(const float* x, int64_t n, const float* w, int64_t out, int64_t in, float* y) {
  if (g_precision == GemmPrecision::BF16) return linear_forward_bf16(x, n, w, out, in, y);
  training_pool().parallel_for(n, kRowBlock, [&](int64_t begin, int64_t end) {
    gemm_f32_ex(false, true, end - begin, out, in, 1.0f, x + begin * in, in, w, in, 0.0f, y + begin * out, out);
  });
}

void linear_backward(const float* x, const float* dy, int64_t n, const float* w, int64_t out, int64_t in, float* dx,
                     float* dw) {
  if (g_precision == GemmPrecision::BF16) return linear_backward_bf16(x, dy, n, w, out, in, dx, dw);
  if (dx != nullptr)
    training_pool().parallel_for(n, kRowBlock, [&](int64_t begin, int64_t end) {
      gemm_f32_ex(false, false, end - begin, in, out, 1.0f, dy + begin * out, out, w, in, 1.0f, dx + begin * in, in);
    });
  // dW rows are independent: each block owns output features [begin, end).
  training_pool().parallel_for(out, kRowBlock, [&](int64_t begin, int64_t end) {
    gemm_f32_ex(true, false, end - begin, in, n, 1.0f, dy + begin, out, x, in, 1.0f, dw + begin * in, in);
  });
}

void rmsnorm_forward(const float* x, int64_t stride, const float* w, int64_t n, int64_t dim, float eps, float* y,
                     float* inv_rms) {
  training_pool().parallel_for(n, 16, [&](int64_t r_begin, int64_t r_end) {
  for (int64_t r = r_begin; r < r_end; ++r) {
    const float* row = x + r * stride;
    double sum = 0;
    for (int64_t i = 0; i < dim; ++i) sum += double(row[i]) * row[i];
    const float inv = float(1.0 / std::sqrt(sum / double(dim) + eps));
    inv_rms[r] = inv;
    for (int64_t i = 0; i < dim; ++i) y[r * dim + i] = row[i] * inv * w[i];
  }
  });
}

void rmsnorm_backward(const float* x, int64_t stride, const float* w, const float* inv_rms, const float* dy,
                      int64_t n, int64_t dim, float* dx, float* dw) {
  for (int64_t r = 0; r < n; ++r) {
    const float* row = x + r * stride;
    const float* g = dy + r * dim;
    const float inv = inv_rms[r];
    // y_i = x_i·inv·w_i with inv = (mean(x²)+eps)^-1/2:  dx_j = inv·g_j·w_j − x_j·inv³·mean_i(g_i·w_i·x_i)
    double dot = 0;
    for (int64_t i = 0; i < dim; ++i) {
      dot += double(g[i]) * w[i] * row[i];
      dw[i] += g[i] * row[i] * inv;
    }
    const float coefficient = float(dot / double(dim)) * inv * inv * inv;
    float* out = dx + r * stride;
    for (int64_t i = 0; i < dim; ++i) out[i] += inv * g[i] * w[i] - row[i] * coefficient;
  }
}

void rope_backward_pairs(float* dx, int64_t dim, const float* cos, const float* sin) {
  for (int64_t i = 0; i < dim / 2; ++i) {
    const float even = dx[2 * i], odd = dx[2 * i + 1];
    // forward: e' = e·c − o·s, o' = e·s + o·c; its transpose:
    dx[2 * i] = even * cos[i] + odd * sin[i];
    dx[2 * i + 1] = -even * sin[i] + odd * cos[i];
  }
}

namespace {
float sigmoid(float v) { return 1.0f / (1.0f + std::exp(-v)); }
}  // namespace

MlpSaved MlpSaved::take(ActivationSlab& slab, int64_t n, int64_t intermediate) {
  const size_t cells = size_t(n * intermediate);
  MlpSaved saved;
  saved.gate = slab.take(cells);
  saved.up = slab.take(cells);
  saved.act = slab.take(cells);
  return saved;
}

void mlp_forward(const MlpTensors& t, const float* x, int64_t n, const MlpSaved& saved, float* y) {
  const size_t cells = size_t(n * t.intermediate);
  if (saved.act.size() != cells) fail("mlp_forward: saved activations for {} cells, not {}", saved.act.size(), cells);
  linear_forward(x, n, t.gate, t.intermediate, t.hidden, saved.gate.data());
  linear_forward(x, n, t.up, t.intermediate, t.hidden, saved.up.data());
  for (size_t i = 0; i < cells; ++i) saved.act[i] = saved.gate[i] * sigmoid(saved.gate[i]) * saved.up[i];
  linear_forward(saved.act.data(), n, t.down, t.hidden, t.intermediate, y);
}

void mlp_backward(const MlpTensors& t, const float* x, int64_t n, const MlpSaved& saved, const float* dy, float* dx) {
  const size_t cells = size_t(n * t.intermediate);
  std::vector<float> d_act(cells, 0.0f), d_gate(cells), d_up(cells);
  linear_backward(saved.act.data(), dy, n, t.down, t.hidden, t.intermediate, d_act.data(), t.d_down);
  for (size_t i = 0; i < cells; ++i) {
    const float g = saved.gate[i], s = sigmoid(g);
    d_up[i] = d_act[i] * g * s;
    d_gate[i] = d_act[i] * saved.up[i] * s * (1.0f + g * (1.0f - s));
  }
  linear_backward(x, d_gate.data(), n, t.gate, t.intermediate, t.hidden, dx, t.d_gate);
  linear_backward(x, d_up.data(), n, t.up, t.intermediate, t.hidden, dx, t.d_up);
}

}  // namespace deepmoe::train
