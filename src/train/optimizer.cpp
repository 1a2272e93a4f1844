#include "train/optimizer.h"

#include <cmath>
#include <numbers>

namespace deepmoe::train {

namespace {

// Trainable elements cut into chunks the pool hands out (a fixed cut, so sums are reproducible).
constexpr size_t kChunk = 1 << 15;

std::vector<std::pair<size_t, size_t>> trainable_chunks(const Parameters& p) {
  std::vector<std::pair<size_t, size_t>> chunks;
  for (const auto& t : p.tensors()) {
    if (!t.trainable) continue;
    for (size_t begin = t.offset; begin < t.offset + t.size; begin += kChunk)
      chunks.emplace_back(begin, std::min(begin + kChunk, t.offset + t.size));
  }
  return chunks;
}

struct AdamWCoefficients {
  float decay, beta1, one_minus_beta1, beta2, one_minus_beta2, step_size, root_correction2, eps;
};
struct LionCoefficients {
  float decay, beta1, one_minus_beta1, beta2, one_minus_beta2, lr;
};

// The updates are memory-bound passes over every parameter and its moments; compiled for
// AVX-512, AVX2 and baseline x86-64, the loader picks the CPU's best (no aliasing between the
// four arrays lets them vectorize).
__attribute__((target_clones("avx512f", "avx2", "default"))) void adamw_update(float* __restrict w,
                                                                               const float* __restrict g,
                                                                               float* __restrict m, float* __restrict v,
                                                                               size_t n, const AdamWCoefficients& k) {
  for (size_t i = 0; i < n; ++i) {
    const float wi = w[i] * k.decay;
    const float mi = k.beta1 * m[i] + k.one_minus_beta1 * g[i];
    const float vi = k.beta2 * v[i] + k.one_minus_beta2 * g[i] * g[i];
    m[i] = mi;
    v[i] = vi;
    w[i] = wi - k.step_size * mi / (std::sqrt(vi) / k.root_correction2 + k.eps);
  }
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void lion_update(float* __restrict w,
                                                                              const float* __restrict g,
                                                                              float* __restrict m, size_t n,
                                                                              const LionCoefficients& k) {
  for (size_t i = 0; i < n; ++i) {
    const float blend = k.beta1 * m[i] + k.one_minus_beta1 * g[i];
    const float sign = float((blend > 0) - (blend < 0));  // sign(0) = 0, as torch.sign
    w[i] = w[i] * k.decay - k.lr * sign;
    m[i] = k.beta2 * m[i] + k.one_minus_beta2 * g[i];
  }
}

}  // namespace

Optimizer::Optimizer(const Parameters& p, OptimizerOptions options) : options_(options) {
  m_.assign(p.values().size(), 0.0f);
  if (options_.kind == OptimizerKind::AdamW) v_.assign(p.values().size(), 0.0f);
  ranges_ = trainable_chunks(p);
}

void Optimizer::step(ThreadPool& pool, Parameters& p, double lr) {
  ++steps_;
  float* w = p.values().data();
  const float* g = p.grads().data();
  const double b1 = options_.beta1, b2 = options_.beta2;
  const float decay = float(1.0 - lr * options_.weight_decay);
  if (options_.kind == OptimizerKind::AdamW) {
    const double correction1 = 1.0 - std::pow(b1, double(steps_));
    const double correction2 = 1.0 - std::pow(b2, double(steps_));
    const float step_size = float(lr / correction1);
    const float root_correction2 = float(std::sqrt(correction2));
    const AdamWCoefficients k{decay,         float(b1), float(1 - b1),    float(b2),
                              float(1 - b2), step_size, root_correction2, float(options_.eps)};
    pool.parallel_for(int64_t(ranges_.size()), 1, [&](int64_t c_begin, int64_t c_end) {
      for (int64_t c = c_begin; c < c_end; ++c) {
        const auto [begin, end] = ranges_[size_t(c)];
        adamw_update(w + begin, g + begin, m_.data() + begin, v_.data() + begin, end - begin, k);
      }
    });
    return;
  }
  const LionCoefficients k{decay, float(b1), float(1 - b1), float(b2), float(1 - b2), float(lr)};
  pool.parallel_for(int64_t(ranges_.size()), 1, [&](int64_t c_begin, int64_t c_end) {
    for (int64_t c = c_begin; c < c_end; ++c) {
      const auto [begin, end] = ranges_[size_t(c)];
      lion_update(w + begin, g + begin, m_.data() + begin, end - begin, k);
    }
  });
}

double learning_rate(const ScheduleOptions& s, int64_t step) {
  if (step < s.warmup) return s.lr * double(step + 1) / double(s.warmup);
  const int64_t after = step - s.warmup, span = std::max<int64_t>(1, s.total_steps - s.warmup);
  switch (s.kind) {
    case Schedule::Constant: return s.lr;
    case Schedule::Cosine: {
      const double progress = std::min(1.0, double(after) / double(span));
      return s.min_lr + 0.5 * (s.lr - s.min_lr) * (1.0 + std::cos(std::numbers::pi * progress));
    }
    case Schedule::Wsd: {
      const int64_t decay_steps = std::max<int64_t>(1, int64_t(double(span) * s.decay_fraction));
      const int64_t decay_start = span - decay_steps;
      if (after < decay_start) return s.lr;
      const double progress = std::min(1.0, double(after - decay_start + 1) / double(decay_steps));
      return s.lr + (s.min_lr - s.lr) * progress;
    }
  }
  return s.lr;
}

double clip_gradients(ThreadPool& pool, Parameters& p, double max_norm) {
  const auto chunks = trainable_chunks(p);
  std::vector<double> partial(chunks.size(), 0.0);
  float* g = p.grads().data();
  pool.parallel_for(int64_t(chunks.size()), 1, [&](int64_t c_begin, int64_t c_end) {
    for (int64_t c = c_begin; c < c_end; ++c) {
      double sum = 0;
      for (size_t i = chunks[size_t(c)].first; i < chunks[size_t(c)].second; ++i) sum += double(g[i]) * g[i];
      partial[size_t(c)] = sum;
    }
  });
  double sum = 0;
  for (const double v : partial) sum += v;  // in chunk order: the same norm for any thread count
  const double norm = std::sqrt(sum);
  if (max_norm > 0) {
    const double coefficient = max_norm / (norm + 1e-6);
    if (coefficient < 1.0)
      pool.parallel_for(int64_t(chunks.size()), 1, [&](int64_t c_begin, int64_t c_end) {
        for (int64_t c = c_begin; c < c_end; ++c)
          for (size_t i = chunks[size_t(c)].first; i < chunks[size_t(c)].second; ++i) g[i] = float(g[i] * coefficient);
      });
  }
  return norm;
}

}  // namespace deepmoe::train
