#include "model/mla.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "kernels/attention_f32.h"
#include "kernels/linear_backward.h"
#include "kernels/matmul.h"
#include "kernels/ops.h"
#include "model/gradients.h"

namespace deepmoe {

namespace {

void grow(std::vector<float>& buffer, int64_t n) {
  if (buffer.size() < size_t(n)) buffer.resize(size_t(n));
}

float* grown(std::vector<float>& buffer, int64_t n) {
  grow(buffer, n);
  return buffer.data();
}

// Causal softmax of `rows` score rows of length `length`: row r may see keys [0, visible(r)).
template <typename Visible>
void causal_softmax(float* scores, int64_t rows, int64_t length, Visible visible) {
  for (int64_t r = 0; r < rows; ++r) {
    float* row = scores + r * length;
    const int64_t n_visible = visible(r);
    softmax_inplace(row, n_visible);
    std::memset(row + n_visible, 0, size_t(length - n_visible) * sizeof(float));
  }
}

// W's rows as f32: W itself when it is f32, otherwise decoded into `buffer`.
const float* f32_rows(const WeightMatrix& w, std::vector<float>& buffer) {
  if (w.format == WeightFormat::F32) return static_cast<const float*>(w.data);
  grow(buffer, w.rows * w.cols);
  dequantize_rows(w, 0, w.rows, buffer.data());
  return buffer.data();
}

// One head at a time: its keys and values up-projected from the cached latents through its
// slices of kv_b_proj, then scores and output. Per head, so only [length, nope + v] of expanded
// keys and values exist at once per thread, whatever the number of heads, and a GGUF's attn_k_b /
// attn_v_b serve without a joined kv_b_proj in memory. Training passes saved_kv ([n_tokens,
// heads, nope + v]: the expanded keys and values stay there for backward) and saved_probs
// ([heads, n_tokens, length]).
void attend_expanded(const Context& ctx, const Config& c, const MlaWeights& w, int64_t n_tokens, int64_t first_position,
                     const float* cache_layer, const float* q, float* attn, float* saved_kv, float* saved_probs) {
  const int64_t heads = c.num_attention_heads, nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim;
  const int64_t rank = c.kv_lora_rank, row = rank + rope, qk = c.qk_head_dim(), v_dim = c.v_head_dim;
  const int64_t length = first_position + n_tokens;
  const float scale = float(c.softmax_scale());
  // Heads are independent: each thread takes a block of heads with its own buffers.
  ctx.pool().parallel_for(heads, 1, [&](int64_t head_begin, int64_t head_end) {
    thread_local std::vector<float> scores_buffer, keys_buffer, values_buffer, key_weights, value_weights;
    for (int64_t h = head_begin; h < head_end; ++h) {
      float *keys, *values, *scores;
      int64_t key_stride = nope, value_stride = v_dim;
      if (saved_kv) {
        keys = saved_kv + h * (nope + v_dim);
        values = keys + nope;
        key_stride = value_stride = heads * (nope + v_dim);
      } else {
        keys = grown(keys_buffer, length * nope);
        values = grown(values_buffer, length * v_dim);
      }
      scores = saved_probs ? saved_probs + h * n_tokens * length : grown(scores_buffer, n_tokens * length);
      // keys [length, nope] = c_kv · W_ukᵀ with W_uk_h [nope, rank]: kv_b_proj's rows, or (GGUF)
      // the transposed half we hold; values [length, v] = c_kv · W_uvᵀ
      if (w.kv_b_proj_keys_transposed.data) {
        const float* w_uk = f32_rows(w.kv_b_proj_keys_transposed.row_slice(h * rank, rank), key_weights);
        gemm_f32(false, length, nope, rank, 1.0f, cache_layer, row, w_uk, nope, 0.0f, keys, key_stride);
      } else {
        const float* w_uk = f32_rows(w.kv_b_proj.row_slice(h * (nope + v_dim), nope), key_weights);
        gemm_f32(true, length, nope, rank, 1.0f, cache_layer, row, w_uk, rank, 0.0f, keys, key_stride);
      }
      const WeightMatrix uv = w.kv_b_proj_values.row_slice(h * w.values_head_stride + w.values_head_offset, v_dim);
      gemm_f32(true, length, v_dim, rank, 1.0f, cache_layer, row, f32_rows(uv, value_weights), rank, 0.0f, values,
               value_stride);
      const float* q_head = q + h * qk;
      // scores [n_tokens, length] = scale · (q_nope·k_nopeᵀ + q_pe·k_peᵀ)
      gemm_f32(true, n_tokens, length, nope, scale, q_head, heads * qk, keys, key_stride, 0.0f, scores, length);
      gemm_f32(true, n_tokens, length, rope, scale, q_head + nope, heads * qk, cache_layer + rank, row, 1.0f, scores,
               length);
      causal_softmax(scores, n_tokens, length, [&](int64_t t) { return first_position + t + 1; });
      // attn[:, h, :] [n_tokens, v] = P · values
      gemm_f32(false, n_tokens, v_dim, length, 1.0f, scores, length, values, value_stride, 0.0f, attn + h * v_dim,
               heads * v_dim);
    }
  });
}

// One sequence's query rows (its tokens × heads, absorbed: [rank + rope] each) against its
// cached rows, as multi-query attention with head size rank + rope: out_latent = softmax(scores)
// · c_kv. Two passes that each read the cache once: scores by blocks of cached positions, then
// by blocks of latent columns the softmax and P·c_kv. (Blocks of query rows instead read the
// cache once per block: decode of V2-Lite's 16 heads read it 4 times per layer.) With a pool the
// blocks spread over its threads, each normalizing its own copy of the scores (cheaper than a
// third pass's wake-up); without one the calling thread runs the same blocks. The blocks are
// fixed, so the rounding depends neither on the thread count nor on the caller's choice.
void latent_attention(bool batch_invariant, const Config& c, int64_t n_tokens, int64_t first_position,
                      const float* cache_layer, const float* q_latent, float* out_latent, ThreadPool* pool,
                      std::vector<float>& scores) {
  const int64_t heads = c.num_attention_heads, rank = c.kv_lora_rank, row = rank + c.qk_rope_head_dim;
  const int64_t length = first_position + n_tokens, query_rows = n_tokens * heads;
  constexpr int64_t kPositionsPerBlock = 64, kColumnsPerBlock = 128;
  const float scale = float(c.softmax_scale());
  grow(scores, query_rows * length);
  auto score_blocks = [&](int64_t b_begin, int64_t b_end) {
    for (int64_t b = b_begin; b < b_end; ++b) {
      const int64_t first = b * kPositionsPerBlock, count = std::min(length - first, kPositionsPerBlock);
      query_key_scores(batch_invariant, query_rows, count, row, scale, q_latent, row, cache_layer + first * row, row,
                       scores.data() + first, length);
    }
  };
  auto weighted_blocks = [&](const float* probabilities, int64_t b_begin, int64_t b_end) {
    for (int64_t b = b_begin; b < b_end; ++b) {
      const int64_t first = b * kColumnsPerBlock, count = std::min(rank - first, kColumnsPerBlock);
      weighted_rows(batch_invariant, query_rows, count, length, probabilities, length, cache_layer + first, row,
                    out_latent + first, rank);
    }
  };
  auto visible = [&](int64_t r) { return first_position + r / heads + 1; };
  const int64_t position_blocks = (length + kPositionsPerBlock - 1) / kPositionsPerBlock;
  const int64_t column_blocks = (rank + kColumnsPerBlock - 1) / kColumnsPerBlock;
  if (!pool) {
    score_blocks(0, position_blocks);
    causal_softmax(scores.data(), query_rows, length, visible);
    weighted_blocks(scores.data(), 0, column_blocks);
    return;
  }
  pool->parallel_for(position_blocks, 1, score_blocks);
  pool->parallel_for(column_blocks, (column_blocks + pool->size() - 1) / pool->size(),
                     [&](int64_t b_begin, int64_t b_end) {
                       thread_local std::vector<float> probabilities;
                       grow(probabilities, query_rows * length);
                       std::copy_n(scores.data(), query_rows * length, probabilities.data());
                       causal_softmax(probabilities.data(), query_rows, length, visible);
                       weighted_blocks(probabilities.data(), b_begin, b_end);
                     });
}

// Absorbed attention of every sequence of a batch: kv_b_proj folded into the queries (q_nope ·
// W_UK per head) and the output (· W_UVᵀ per head) for all the batch's tokens at once, so each
// head's slices of kv_b_proj are read once per step; then each sequence against its own cache.
// Sequences of a few tokens (decode) run one per thread, the others one at a time over the pool.
// first_token: each sequence's first token in q and attn, then the end (batch.size() + 1 entries,
// counted from first_token[0]).
void attend_absorbed(const Context& ctx, const Config& c, const MlaWeights& w, std::span<const BatchSequence> batch,
                     std::span<float* const> cache_layers, std::span<const int64_t> first_token, const float* q,
                     float* attn, MlaScratch& s) {
  ThreadPool& pool = ctx.pool();
  const int64_t heads = c.num_attention_heads, nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim;
  const int64_t rank = c.kv_lora_rank, row = rank + rope, qk = c.qk_head_dim(), v_dim = c.v_head_dim;
  const int64_t base = first_token.front(), n_tokens = first_token.back() - base;
  // A training view leaves the transposed key half out (its weights change every step): decoding
  // over one must ask for it (ModelWeights::view_f32's transposed_keys), or it would read nothing.
  if (!w.kv_b_proj_keys_transposed.data) fail("absorbed attention needs kv_b_proj's transposed key half");
  grow(s.q_latent, n_tokens * heads * row);
  grow(s.out_latent, n_tokens * heads * rank);
  pool.parallel_for(heads, 1, [&](int64_t head_begin, int64_t head_end) {
    for (int64_t h = head_begin; h < head_end; ++h) {
      // q_latent[:, h, :rank] = q_nope_h · W_UK_h (W_UK_h is [nope, rank]; we hold its transpose).
      const WeightMatrix w_uk = w.kv_b_proj_keys_transposed.row_slice(h * rank, rank);
      matmul_rows(ctx, q + h * qk, heads * qk, n_tokens, w_uk, s.q_latent.data() + h * row, heads * row, 0, rank);
      for (int64_t t = 0; t < n_tokens; ++t)
        std::memcpy(s.q_latent.data() + (t * heads + h) * row + rank, q + (t * heads + h) * qk + nope,
                    size_t(rope) * sizeof(float));
    }
  });
  auto attend = [&](size_t i, ThreadPool* sequence_pool, std::vector<float>& scores) {
    latent_attention(ctx.batch_invariant(), c, int64_t(batch[i].tokens.size()), batch[i].first_position,
                     cache_layers[i], s.q_latent.data() + (first_token[i] - base) * heads * row,
                     s.out_latent.data() + (first_token[i] - base) * heads * rank, sequence_pool, scores);
  };
  std::vector<size_t> short_sequences;
  for (size_t i = 0; i < batch.size(); ++i) {
    if (int64_t(batch[i].tokens.size()) <= kSmallBatchMax && batch.size() > 1) short_sequences.push_back(i);
    else attend(i, &pool, s.scores);
  }
  pool.parallel_for(int64_t(short_sequences.size()), 1, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> scores;  // this worker's own
    for (int64_t k = begin; k < end; ++k) attend(short_sequences[size_t(k)], nullptr, scores);
  });
  pool.parallel_for(heads, 1, [&](int64_t head_begin, int64_t head_end) {
    for (int64_t h = head_begin; h < head_end; ++h) {
      // attn[:, h, :] = out_latent_h · W_UVᵀ, W_UV_h = the value up-projection rows of head h.
      const WeightMatrix w_uv = w.kv_b_proj_values.row_slice(h * w.values_head_stride + w.values_head_offset, v_dim);
      matmul_rows(ctx, s.out_latent.data() + h * rank, heads * rank, n_tokens, w_uv, attn + h * v_dim, heads * v_dim, 0,
                  v_dim);
    }
  });
}

}  // namespace

MlaSaved MlaSaved::take(const Config& c, ActivationSlab& slab, int64_t batch, int64_t seq) {
  const int64_t n = batch * seq, heads = c.num_attention_heads, row = c.kv_lora_rank + c.qk_rope_head_dim;
  MlaSaved s;
  if (c.q_lora_rank) {
    s.q_a = slab.take(size_t(n * *c.q_lora_rank));
    s.q_a_inv_rms = slab.take(size_t(n));
    s.q_latent = slab.take(size_t(n * *c.q_lora_rank));
  }
  s.q = slab.take(size_t(n * heads * c.qk_head_dim()));
  s.kv_a = slab.take(size_t(n * row));
  s.c_inv_rms = slab.take(size_t(n));
  s.latent = slab.take(size_t(n * row));
  s.kv = slab.take(size_t(n * heads * (c.qk_nope_head_dim + c.v_head_dim)));
  s.probs = slab.take(size_t(batch * heads * seq * seq));  // every row written by the forward pass
  s.attn = slab.take(size_t(n * heads * c.v_head_dim));
  s.seq = seq;
  return s;
}

void mla_forward(const Context& ctx, const Config& c, const MlaWeights& w, const float* x,
                 std::span<const BatchSequence> batch, const RopeTable& rope, LatentRows* cache, int64_t layer,
                 std::optional<AttentionMode> forced, MlaScratch& s, MlaSaved* saved, float* out) {
  ThreadPool& pool = ctx.pool();
  const int64_t heads = c.num_attention_heads, nope = c.qk_nope_head_dim, rope_dim = c.qk_rope_head_dim;
  const int64_t rank = c.kv_lora_rank, row = rank + rope_dim, qk = c.qk_head_dim(), v_dim = c.v_head_dim;
  const float eps = float(c.rms_norm_eps);
  // Each sequence's first token in the batch, then the end.
  std::vector<int64_t>& first_token = s.first_token;
  first_token.assign(batch.size() + 1, 0);
  for (size_t index = 0; index < batch.size(); ++index)
    first_token[index + 1] = first_token[index] + int64_t(batch[index].tokens.size());
  const int64_t n_tokens = first_token.back();

  // q: [n_tokens, heads, nope + rope]; kv_a: [n_tokens, rank + rope] -> cache rows: normalized
  // c_kv, rotated k_pe. q_a_proj and kv_a_proj read the same input: one wake-up of the pool.
  // Training keeps each of them (saved); inference normalizes q_lora in place.
  float* q = saved ? saved->q.data() : grown(s.q, n_tokens * heads * qk);
  float* kv_a = saved ? saved->kv_a.data() : grown(s.kv_a, n_tokens * row);
  if (c.q_lora_rank) {
    const int64_t q_rank = *c.q_lora_rank;
    float* q_a = saved ? saved->q_a.data() : grown(s.q_lora, n_tokens * q_rank);
    float* q_latent = saved ? saved->q_latent.data() : q_a;
    const MatmulJob jobs[] = {{x, n_tokens, &w.q_a_proj, q_a}, {x, n_tokens, &w.kv_a_proj_with_mqa, kv_a}};
    matmul_batch(ctx, jobs);
    rmsnorm(q_a, q_rank, w.q_a_layernorm, n_tokens, q_rank, eps, q_latent, q_rank,
            saved ? saved->q_a_inv_rms.data() : nullptr);
    matmul(ctx, q_latent, n_tokens, w.q_b_proj, q);
  } else {
    const MatmulJob jobs[] = {{x, n_tokens, &w.q_proj, q}, {x, n_tokens, &w.kv_a_proj_with_mqa, kv_a}};
    matmul_batch(ctx, jobs);
  }
  float* attn = saved ? saved->attn.data() : grown(s.attn, n_tokens * heads * v_dim);

  // Each sequence's new cache rows (normalized c_kv, rotated k_pe), stored at once (they are
  // final), and its rotated queries; sequences in parallel (a paged cache gathers each one's rows).
  std::vector<float*>& cache_layers = s.cache_layers;
  cache_layers.assign(batch.size(), nullptr);
  pool.parallel_for(int64_t(batch.size()), 1, [&](int64_t begin, int64_t end) {
    for (size_t index = size_t(begin); index < size_t(end); ++index) {
      const int64_t count = int64_t(batch[index].tokens.size()), first_position = batch[index].first_position;
      cache_layers[index] = saved ? saved->latent.data() + first_token[index] * row : cache->open(layer, index);
      float* cache_rows = cache_layers[index] + first_position * row;
      rmsnorm(kv_a + first_token[index] * row, row, w.kv_a_layernorm, count, rank, eps, cache_rows, row,
              saved ? saved->c_inv_rms.data() + first_token[index] : nullptr);
      for (int64_t t = 0; t < count; ++t) {
        const int64_t token = first_token[index] + t;
        float* k_pe = cache_rows + t * row + rank;
        std::memcpy(k_pe, kv_a + token * row + rank, size_t(rope_dim) * sizeof(float));
        rope_rotate_pairs(k_pe, rope_dim, rope.cos_at(token), rope.sin_at(token));
        for (int64_t h = 0; h < heads; ++h)
          rope_rotate_pairs(q + (token * heads + h) * qk + nope, rope_dim, rope.cos_at(token), rope.sin_at(token));
      }
      if (!saved) cache->commit(layer, index);
    }
  });
  // Attention: absorbed for the whole batch when every sequence is (always, when forced);
  // otherwise each sequence by its own mode. Training: expanded, keeping keys, values and scores.
  auto mode_of = [&](size_t index) {
    if (saved) return AttentionMode::Expanded;
    return forced.value_or(int64_t(batch[index].tokens.size()) <= kSmallBatchMax ? AttentionMode::Absorbed
                                                                                 : AttentionMode::Expanded);
  };
  bool all_absorbed = true;
  for (size_t index = 0; index < batch.size(); ++index)
    all_absorbed = all_absorbed && mode_of(index) == AttentionMode::Absorbed;
  if (all_absorbed) {
    attend_absorbed(ctx, c, w, batch, cache_layers, first_token, q, attn, s);
  } else {
    for (size_t index = 0; index < batch.size(); ++index) {
      const int64_t count = int64_t(batch[index].tokens.size());
      const float* q_sequence = q + first_token[index] * heads * qk;
      float* attn_sequence = attn + first_token[index] * heads * v_dim;
      if (mode_of(index) == AttentionMode::Expanded) {
        float* saved_kv = saved ? saved->kv.data() + first_token[index] * heads * (nope + v_dim) : nullptr;
        float* saved_probs = saved ? saved->probs.data() + int64_t(index) * heads * count * count : nullptr;
        attend_expanded(ctx, c, w, count, batch[index].first_position, cache_layers[index], q_sequence, attn_sequence,
                        saved_kv, saved_probs);
      } else {
        attend_absorbed(ctx, c, w, batch.subspan(index, 1), std::span(cache_layers).subspan(index, 1),
                        std::span(first_token).subspan(index, 2), q_sequence, attn_sequence, s);
      }
    }
  }
  matmul(ctx, attn, n_tokens, w.o_proj, out);
}

void mla_backward(const Context& ctx, const Config& c, const MlaWeights& w, const MlaWeights& g, const float* x,
                  int64_t batch, const RopeTable& rope, const MlaSaved& s, const float* d_out, float* dx) {
  const int64_t seq = s.seq, n = batch * seq, hidden = c.hidden_size, heads = c.num_attention_heads;
  const int64_t nope = c.qk_nope_head_dim, rope_dim = c.qk_rope_head_dim, v_dim = c.v_head_dim, qk = c.qk_head_dim();
  const int64_t rank = c.kv_lora_rank, row = rank + rope_dim;
  const int64_t q_stride = heads * qk, kv_stride = heads * (nope + v_dim);
  const float scale = float(c.softmax_scale());

  std::vector<float> d_attn(size_t(n * heads * v_dim), 0.0f);
  linear_backward(ctx, s.attn.data(), -1, d_out, n, w.o_proj, d_attn.data(), grad_data(g.o_proj));

  std::vector<float> dq(s.q.size(), 0.0f), dkv(s.kv.size(), 0.0f), dk_rope(size_t(n * rope_dim), 0.0f);
  // Per sequence: its rows of dq, dkv and dk_rope are its own, so sequences run in parallel.
  ctx.pool().parallel_for(batch, 1, [&](int64_t b_begin, int64_t b_end) {
    std::vector<float> dp(static_cast<size_t>(seq * seq));
    for (int64_t b = b_begin; b < b_end; ++b) {
      const int64_t row0 = b * seq;
      const float* k_rope = s.latent.data() + row0 * row + rank;
      for (int64_t h = 0; h < heads; ++h) {
        const float* probs = s.probs.data() + (b * heads + h) * seq * seq;
        const float* q = s.q.data() + row0 * q_stride + h * qk;
        const float* k = s.kv.data() + row0 * kv_stride + h * (nope + v_dim);
        const float* da = d_attn.data() + row0 * heads * v_dim + h * v_dim;
        float* dq_h = dq.data() + row0 * q_stride + h * qk;
        float* dk_h = dkv.data() + row0 * kv_stride + h * (nope + v_dim);
        // out = P·V:  dP = dOut·Vᵀ,  dV += Pᵀ·dOut
        gemm_f32_ex(false, true, seq, seq, v_dim, 1.0f, da, heads * v_dim, k + nope, kv_stride, 0.0f, dp.data(), seq);
        gemm_f32_ex(true, false, seq, v_dim, seq, 1.0f, probs, seq, da, heads * v_dim, 1.0f, dk_h + nope, kv_stride);
        // softmax: dS = P ⊙ (dP − Σ P·dP), then the scale of the scores.
        for (int64_t t = 0; t < seq; ++t) {
          const float* pr = probs + t * seq;
          float* grad = dp.data() + t * seq;
          double dot = 0;
          for (int64_t u = 0; u <= t; ++u) dot += double(pr[u]) * grad[u];
          for (int64_t u = 0; u < seq; ++u) grad[u] = u <= t ? pr[u] * (grad[u] - float(dot)) * scale : 0.0f;
        }
        // scores = q_nope·k_nopeᵀ + q_rope·k_ropeᵀ
        gemm_f32_ex(false, false, seq, nope, seq, 1.0f, dp.data(), seq, k, kv_stride, 1.0f, dq_h, q_stride);
        gemm_f32_ex(true, false, seq, nope, seq, 1.0f, dp.data(), seq, q, q_stride, 1.0f, dk_h, kv_stride);
        gemm_f32_ex(false, false, seq, rope_dim, seq, 1.0f, dp.data(), seq, k_rope, row, 1.0f, dq_h + nope, q_stride);
        gemm_f32_ex(true, false, seq, rope_dim, seq, 1.0f, dp.data(), seq, q + nope, q_stride, 1.0f,
                    dk_rope.data() + row0 * rope_dim, rope_dim);
      }
    }
  });
  // Undo the rotations on the gradients of the rope parts.
  std::vector<float> dkv_a(size_t(n * row), 0.0f);
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t h = 0; h < heads; ++h)
      rope_rotate_pairs_backward(dq.data() + (r * heads + h) * qk + nope, rope_dim, rope.cos_at(r), rope.sin_at(r));
    rope_rotate_pairs_backward(dk_rope.data() + r * rope_dim, rope_dim, rope.cos_at(r), rope.sin_at(r));
    std::copy_n(dk_rope.data() + r * rope_dim, rope_dim, dkv_a.data() + r * row + rank);
  }
  // kv = kv_b(norm(c)),  kv_a = x·W_kv_aᵀ
  std::vector<float> dc_normed(size_t(n * rank), 0.0f);
  linear_backward(ctx, s.latent.data(), row, dkv.data(), n, w.kv_b_proj, dc_normed.data(), grad_data(g.kv_b_proj));
  rmsnorm_backward(s.kv_a.data(), row, w.kv_a_layernorm, s.c_inv_rms.data(), dc_normed.data(), n, rank, dkv_a.data(),
                   grad_data(g.kv_a_layernorm));
  linear_backward(ctx, x, hidden, dkv_a.data(), n, w.kv_a_proj_with_mqa, dx, grad_data(g.kv_a_proj_with_mqa));
  if (c.q_lora_rank) {
    const int64_t q_rank = *c.q_lora_rank;
    std::vector<float> dq_latent(size_t(n * q_rank), 0.0f), dq_a(size_t(n * q_rank), 0.0f);
    linear_backward(ctx, s.q_latent.data(), -1, dq.data(), n, w.q_b_proj, dq_latent.data(), grad_data(g.q_b_proj));
    rmsnorm_backward(s.q_a.data(), q_rank, w.q_a_layernorm, s.q_a_inv_rms.data(), dq_latent.data(), n, q_rank,
                     dq_a.data(), grad_data(g.q_a_layernorm));
    linear_backward(ctx, x, hidden, dq_a.data(), n, w.q_a_proj, dx, grad_data(g.q_a_proj));
  } else {
    linear_backward(ctx, x, hidden, dq.data(), n, w.q_proj, dx, grad_data(g.q_proj));
  }
}

}  // namespace deepmoe
