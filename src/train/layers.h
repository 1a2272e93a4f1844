// Forward and backward of the small layers training composes (all f32, row-major, weights
// [out_features, in_features] as HF stores them). Backward functions *accumulate* into input
// and weight gradients (+=), so a tensor used twice (tied embeddings, residuals) sums its parts.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "core/thread_pool.h"
#include "train/activation_slab.h"

namespace deepmoe::train {

// The pool every training layer splits its work over (set once by TrainGraph; BLAS runs one
// thread per block, so results do not depend on the thread count).
void set_training_pool(ThreadPool* pool);
ThreadPool& training_pool();

// Inside a parallel region (experts in parallel), the layers must not split their work again:
// while one of these lives on a thread, training_pool() is a one-thread pool on that thread.
// Create it inside the parallel body.
class SerialLayers {
 public:
  SerialLayers();
  ~SerialLayers();
  SerialLayers(const SerialLayers&) = delete;
  SerialLayers& operator=(const SerialLayers&) = delete;

 private:
  bool previous_;
};

// The linear layers' GEMM operands: f32, or bf16 with f32 accumulation (mixed precision; the
// weights stay f32 masters, their bf16 copy comes from Bf16Weights). Set once by TrainGraph.
enum class GemmPrecision { F32, BF16 };
void set_training_precision(GemmPrecision precision);

// The bf16 copy of the parameters' flat f32 buffer, refreshed whenever the weights change. In
// bf16 mode the linear layers find a weight's copy by its address in the f32 buffer; a weight
// outside it (layer tests) is converted on the fly.
class Bf16Weights {
 public:
  void refresh(const float* values, size_t count);  // converts on the training pool
  const uint16_t* find(const float* w, size_t count) const;

 private:
  const float* base_ = nullptr;
  std::vector<uint16_t> bits_;
};
void set_bf16_weights(const Bf16Weights* weights);

// y[n, out] = x[n, in] · Wᵀ
void linear_forward(const float* x, int64_t n, const float* w, int64_t out, int64_t in, float* y);
// dx[n, in] += dy · W (skipped when dx is null); dw[out, in] += dyᵀ · x
void linear_backward(const float* x, const float* dy, int64_t n, const float* w, int64_t out, int64_t in, float* dx,
                     float* dw);

// y = x / rms(x) * w per row of `dim` values (rows `stride` apart in x); inv_rms[n] is saved.
void rmsnorm_forward(const float* x, int64_t stride, const float* w, int64_t n, int64_t dim, float eps, float* y,
                     float* inv_rms);
// dx rows `stride` apart, accumulated.
void rmsnorm_backward(const float* x, int64_t stride, const float* w, const float* inv_rms, const float* dy,
                      int64_t n, int64_t dim, float* dx, float* dw);

// The inverse of rope_rotate_pairs for a gradient: rotate pairs back by the same angles (cos and
// sin carry YaRN's scale, which the chain rule keeps).
void rope_backward_pairs(float* dx, int64_t dim, const float* cos, const float* sin);

// SiLU-gated MLP: y = (silu(x·Wgᵀ) ⊙ x·Wuᵀ)·Wdᵀ. Saves gate and up pre-activations.
struct MlpSaved {
  std::span<float> gate, up, act;  // [n, intermediate]
  // Carves the spans for n rows (before a parallel region: the slab is not thread-safe).
  static MlpSaved take(ActivationSlab& slab, int64_t n, int64_t intermediate);
};
struct MlpTensors {
  const float *gate, *up, *down;
  float *d_gate, *d_up, *d_down;
  int64_t hidden, intermediate;
};
// saved: from MlpSaved::take for n rows.
void mlp_forward(const MlpTensors& t, const float* x, int64_t n, const MlpSaved& saved, float* y);
void mlp_backward(const MlpTensors& t, const float* x, int64_t n, const MlpSaved& saved, const float* dy, float* dx);

}  // namespace deepmoe::train
