#include "train/optimizer.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "core/error.h"

namespace deepmoe::train {

namespace {

// Trainable elements cut into chunks the pool hands out (a fixed cut, so sums are reproducible).
constexpr size_t kChunk = 1 << 15;

// The trainable elements of `shard`, in chunks of at most kChunk: the whole buffer's chunks cut
// at the shard's edges (so one rank alone has the chunks it always had).
std::vector<std::pair<size_t, size_t>> trainable_chunks(const Parameters& p, dist::Shard shard) {
  std::vector<std::pair<size_t, size_t>> chunks;
  for (const auto& t : p.tensors()) {
    if (!t.trainable || t.offset + t.size <= shard.begin || t.offset >= shard.end) continue;
    for (size_t begin = t.offset; begin < t.offset + t.size; begin += kChunk) {
      const dist::Shard part = dist::intersect(shard, begin, std::min(begin + kChunk, t.offset + t.size));
      if (part.size() > 0) chunks.emplace_back(part.begin, part.end);
    }
  }
  return chunks;
}

dist::Shard whole(const Parameters& p) { return {0, p.values().size()}; }

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

Optimizer::Optimizer(const Parameters& p, OptimizerOptions options) : Optimizer(p, options, whole(p)) {}

Optimizer::Optimizer(const Parameters& p, OptimizerOptions options, dist::Shard shard)
    : options_(options), shard_(shard) {
  if (shard.begin > shard.end || shard.end > p.values().size())
    fail("optimizer shard [{}, {}) is outside the {} parameters", shard.begin, shard.end, p.values().size());
  m_.assign(shard.size(), 0.0f);
  if (options_.kind == OptimizerKind::AdamW) v_.assign(shard.size(), 0.0f);
  ranges_ = trainable_chunks(p, shard);
}

void Optimizer::copy_shard_from(const Optimizer& whole_buffer) {
  if (whole_buffer.shard_.begin != 0 || whole_buffer.shard_.end < shard_.end || whole_buffer.v_.empty() != v_.empty())
    fail("optimizer: the state to copy a shard from is not a whole buffer of the same optimizer");
  std::copy(whole_buffer.m_.begin() + ptrdiff_t(shard_.begin), whole_buffer.m_.begin() + ptrdiff_t(shard_.end),
            m_.begin());
  if (!v_.empty())
    std::copy(whole_buffer.v_.begin() + ptrdiff_t(shard_.begin), whole_buffer.v_.begin() + ptrdiff_t(shard_.end),
              v_.begin());
  steps_ = whole_buffer.steps_;
}

void Optimizer::step(ThreadPool& pool, Parameters& p, double lr) {
  step(pool, p, std::span<const float>(p.grads()).subspan(shard_.begin, shard_.size()), lr);
}

void Optimizer::step(ThreadPool& pool, Parameters& p, std::span<const float> grads, double lr) {
  if (grads.size() != shard_.size())
    fail("optimizer: {} gradients for a shard of {} parameters", grads.size(), shard_.size());
  ++steps_;
  // The chunks hold flat-buffer offsets; the shard's arrays start at shard_.begin.
  float* w = p.values().data();
  const size_t first = shard_.begin;
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
        adamw_update(w + begin, grads.data() + (begin - first), m_.data() + (begin - first),
                     v_.data() + (begin - first), end - begin, k);
      }
    });
    return;
  }
  const LionCoefficients k{decay, float(b1), float(1 - b1), float(b2), float(1 - b2), float(lr)};
  pool.parallel_for(int64_t(ranges_.size()), 1, [&](int64_t c_begin, int64_t c_end) {
    for (int64_t c = c_begin; c < c_end; ++c) {
      const auto [begin, end] = ranges_[size_t(c)];
      lion_update(w + begin, grads.data() + (begin - first), m_.data() + (begin - first), end - begin, k);
    }
  });
}

bool ReducePlateau::observe(double val_loss, int64_t patience) {
  if (!seen || val_loss < best * (1.0 - 1e-4)) {
    best = val_loss;
    seen = true;
    bad = 0;
    return false;
  }
  if (++bad <= patience) return false;
  ++cuts;
  bad = 0;
  return true;
}

double learning_rate(const ScheduleOptions& s, int64_t step, const ReducePlateau& plateau) {
  if (step < s.warmup) return s.lr * double(step + 1) / double(s.warmup);
  const int64_t after = step - s.warmup, span = std::max<int64_t>(1, s.total_steps - s.warmup);
  switch (s.kind) {
    case Schedule::Constant: return s.lr;
    case Schedule::Plateau: return std::max(s.min_lr, s.lr * std::pow(s.plateau_factor, double(plateau.cuts)));
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

double squared_gradient_norm(ThreadPool& pool, const Parameters& p, dist::Shard shard, std::span<const float> grads) {
  if (grads.size() != shard.size()) fail("gradient norm: {} gradients for a shard of {}", grads.size(), shard.size());
  const auto chunks = trainable_chunks(p, shard);
  std::vector<double> partial(chunks.size(), 0.0);
  const float* g = grads.data();  // the chunks hold flat-buffer offsets; g starts at shard.begin
  pool.parallel_for(int64_t(chunks.size()), 1, [&](int64_t c_begin, int64_t c_end) {
    for (int64_t c = c_begin; c < c_end; ++c) {
      double sum = 0;
      for (size_t i = chunks[size_t(c)].first - shard.begin; i < chunks[size_t(c)].second - shard.begin; ++i)
        sum += double(g[i]) * g[i];
      partial[size_t(c)] = sum;
    }
  });
  double sum = 0;
  for (const double v : partial) sum += v;  // in chunk order: the same norm for any thread count
  return sum;
}

double clip_coefficient(double norm, double max_norm) {
  if (max_norm <= 0) return 1.0;
  return std::min(1.0, max_norm / (norm + 1e-6));
}

void scale_gradients(ThreadPool& pool, const Parameters& p, dist::Shard shard, std::span<float> grads,
                     double coefficient) {
  if (coefficient == 1.0) return;
  const auto chunks = trainable_chunks(p, shard);
  float* g = grads.data();
  pool.parallel_for(int64_t(chunks.size()), 1, [&](int64_t c_begin, int64_t c_end) {
    for (int64_t c = c_begin; c < c_end; ++c)
      for (size_t i = chunks[size_t(c)].first - shard.begin; i < chunks[size_t(c)].second - shard.begin; ++i)
        g[i] = float(g[i] * coefficient);
  });
}

double clip_gradients(ThreadPool& pool, Parameters& p, double max_norm) {
  const std::span<float> grads(p.grads());
  const double norm = std::sqrt(squared_gradient_norm(pool, p, whole(p), grads));
  scale_gradients(pool, p, whole(p), grads, clip_coefficient(norm, max_norm));
  return norm;
}

}  // namespace deepmoe::train
