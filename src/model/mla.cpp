#include "model/mla.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/attention_f32.h"
#include "kernels/matmul.h"
#include "kernels/ops.h"

namespace deepmoe {

namespace {

void grow(std::vector<float>& buffer, int64_t n) {
  if (buffer.size() < size_t(n)) buffer.resize(size_t(n));
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
// slices of the two halves of kv_b_proj (MlaWeights), then scores and output. Per head, so only
// [length, nope + v] of expanded keys and values exist at once per thread, whatever the number
// of heads, and a GGUF's attn_k_b / attn_v_b serve without a joined kv_b_proj in memory.
void attend_expanded(const Config& c, const MlaWeights& w, int64_t n_tokens, int64_t first_position,
                     const float* cache_layer, const float* q, float* attn, ThreadPool& pool) {
  const int64_t heads = c.num_attention_heads, nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim;
  const int64_t rank = c.kv_lora_rank, row = rank + rope, qk = c.qk_head_dim(), v_dim = c.v_head_dim;
  const int64_t length = first_position + n_tokens;
  const float scale = float(c.softmax_scale());
  // Heads are independent: each thread takes a block of heads with its own buffers.
  pool.parallel_for(heads, 1, [&](int64_t head_begin, int64_t head_end) {
    thread_local std::vector<float> scores, keys, values, key_weights, value_weights;
    grow(scores, n_tokens * length);
    grow(keys, length * nope);
    grow(values, length * v_dim);
    for (int64_t h = head_begin; h < head_end; ++h) {
      // keys [length, nope] = c_kv · W_uk, W_uk [rank, nope]; values [length, v] = c_kv · W_uvᵀ
      const float* w_uk = f32_rows(w.kv_b_proj_keys_transposed.row_slice(h * rank, rank), key_weights);
      gemm_f32(false, length, nope, rank, 1.0f, cache_layer, row, w_uk, nope, 0.0f, keys.data(), nope);
      const WeightMatrix uv = w.kv_b_proj_values.row_slice(h * w.values_head_stride + w.values_head_offset, v_dim);
      gemm_f32(true, length, v_dim, rank, 1.0f, cache_layer, row, f32_rows(uv, value_weights), rank, 0.0f,
               values.data(), v_dim);
      const float* q_head = q + h * qk;
      // scores [n_tokens, length] = scale · (q_nope·k_nopeᵀ + q_pe·k_peᵀ)
      gemm_f32(true, n_tokens, length, nope, scale, q_head, heads * qk, keys.data(), nope, 0.0f, scores.data(),
               length);
      gemm_f32(true, n_tokens, length, rope, scale, q_head + nope, heads * qk, cache_layer + rank, row, 1.0f,
               scores.data(), length);
      causal_softmax(scores.data(), n_tokens, length, [&](int64_t t) { return first_position + t + 1; });
      // attn[:, h, :] [n_tokens, v] = P · values
      gemm_f32(false, n_tokens, v_dim, length, 1.0f, scores.data(), length, values.data(), v_dim, 0.0f,
               attn + h * v_dim, heads * v_dim);
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
void latent_attention(const Config& c, int64_t n_tokens, int64_t first_position, const float* cache_layer,
                      const float* q_latent, float* out_latent, ThreadPool* pool) {
  const int64_t heads = c.num_attention_heads, rank = c.kv_lora_rank, row = rank + c.qk_rope_head_dim;
  const int64_t length = first_position + n_tokens, query_rows = n_tokens * heads;
  constexpr int64_t kPositionsPerBlock = 64, kColumnsPerBlock = 128;
  const float scale = float(c.softmax_scale());
  thread_local std::vector<float> thread_scores;
  std::vector<float>& scores = thread_scores;  // the caller's, read by the pool's threads
  grow(scores, query_rows * length);
  auto score_blocks = [&](int64_t b_begin, int64_t b_end) {
    for (int64_t b = b_begin; b < b_end; ++b) {
      const int64_t first = b * kPositionsPerBlock, count = std::min(length - first, kPositionsPerBlock);
      query_key_scores(query_rows, count, row, scale, q_latent, row, cache_layer + first * row, row,
                       scores.data() + first, length);
    }
  };
  auto weighted_blocks = [&](const float* probabilities, int64_t b_begin, int64_t b_end) {
    for (int64_t b = b_begin; b < b_end; ++b) {
      const int64_t first = b * kColumnsPerBlock, count = std::min(rank - first, kColumnsPerBlock);
      weighted_rows(query_rows, count, length, probabilities, length, cache_layer + first, row, out_latent + first,
                    rank);
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
  pool->parallel_for(column_blocks, (column_blocks + pool->size() - 1) / pool->size(), [&](int64_t b_begin, int64_t b_end) {
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
void attend_absorbed(const Config& c, const MlaWeights& w, std::span<const BatchSequence> batch,
                     std::span<float* const> cache_layers, std::span<const int64_t> first_token, const float* q,
                     float* attn, MlaScratch& s, ThreadPool& pool) {
  const int64_t heads = c.num_attention_heads, nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim;
  const int64_t rank = c.kv_lora_rank, row = rank + rope, qk = c.qk_head_dim(), v_dim = c.v_head_dim;
  const int64_t base = first_token.front(), n_tokens = first_token.back() - base;
  grow(s.q_latent, n_tokens * heads * row);
  grow(s.out_latent, n_tokens * heads * rank);
  pool.parallel_for(heads, 1, [&](int64_t head_begin, int64_t head_end) {
    for (int64_t h = head_begin; h < head_end; ++h) {
      // q_latent[:, h, :rank] = q_nope_h · W_UK_h (W_UK_h is [nope, rank]; we hold its transpose).
      const WeightMatrix w_uk = w.kv_b_proj_keys_transposed.row_slice(h * rank, rank);
      matmul_rows(q + h * qk, heads * qk, n_tokens, w_uk, s.q_latent.data() + h * row, heads * row, 0, rank);
      for (int64_t t = 0; t < n_tokens; ++t)
        std::memcpy(s.q_latent.data() + (t * heads + h) * row + rank, q + (t * heads + h) * qk + nope,
                    size_t(rope) * sizeof(float));
    }
  });
  auto attend = [&](size_t i, ThreadPool* sequence_pool) {
    latent_attention(c, int64_t(batch[i].tokens.size()), batch[i].first_position, cache_layers[i],
                     s.q_latent.data() + (first_token[i] - base) * heads * row,
                     s.out_latent.data() + (first_token[i] - base) * heads * rank,
                     sequence_pool);
  };
  std::vector<size_t> short_sequences;
  for (size_t i = 0; i < batch.size(); ++i) {
    if (int64_t(batch[i].tokens.size()) <= kSmallBatchMax && batch.size() > 1) short_sequences.push_back(i);
    else attend(i, &pool);
  }
  pool.parallel_for(int64_t(short_sequences.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) attend(short_sequences[size_t(k)], nullptr);
  });
  pool.parallel_for(heads, 1, [&](int64_t head_begin, int64_t head_end) {
    for (int64_t h = head_begin; h < head_end; ++h) {
      // attn[:, h, :] = out_latent_h · W_UVᵀ, W_UV_h = the value up-projection rows of head h.
      const WeightMatrix w_uv = w.kv_b_proj_values.row_slice(h * w.values_head_stride + w.values_head_offset, v_dim);
      matmul_rows(s.out_latent.data() + h * rank, heads * rank, n_tokens, w_uv, attn + h * v_dim, heads * v_dim, 0,
                  v_dim);
    }
  });
}

}  // namespace

void mla_forward(const Config& c, const MlaWeights& w, const float* x, std::span<const BatchSequence> batch,
                 const RopeTable& rope, LatentRows& cache, int64_t layer, std::optional<AttentionMode> forced,
                 MlaScratch& s, ThreadPool& pool, float* out) {
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
  grow(s.q, n_tokens * heads * qk);
  grow(s.kv_a, n_tokens * row);
  if (c.q_lora_rank) {
    grow(s.q_lora, n_tokens * *c.q_lora_rank);
    const MatmulJob jobs[] = {{x, n_tokens, &w.q_a_proj, s.q_lora.data()},
                              {x, n_tokens, &w.kv_a_proj_with_mqa, s.kv_a.data()}};
    matmul_batch(pool, jobs);
    rmsnorm(s.q_lora.data(), *c.q_lora_rank, w.q_a_layernorm, n_tokens, *c.q_lora_rank, eps, s.q_lora.data(),
            *c.q_lora_rank);
    matmul(pool, s.q_lora.data(), n_tokens, w.q_b_proj, s.q.data());
  } else {
    const MatmulJob jobs[] = {{x, n_tokens, &w.q_proj, s.q.data()}, {x, n_tokens, &w.kv_a_proj_with_mqa, s.kv_a.data()}};
    matmul_batch(pool, jobs);
  }
  grow(s.attn, n_tokens * heads * v_dim);

  // Each sequence's new cache rows (normalized c_kv, rotated k_pe), stored at once (they are
  // final), and its rotated queries; sequences in parallel (a paged cache gathers each one's rows).
  std::vector<float*>& cache_layers = s.cache_layers;
  cache_layers.assign(batch.size(), nullptr);
  pool.parallel_for(int64_t(batch.size()), 1, [&](int64_t begin, int64_t end) {
    for (size_t index = size_t(begin); index < size_t(end); ++index) {
      const int64_t count = int64_t(batch[index].tokens.size()), first_position = batch[index].first_position;
      cache_layers[index] = cache.open(layer, index);
      float* cache_rows = cache_layers[index] + first_position * row;
      rmsnorm(s.kv_a.data() + first_token[index] * row, row, w.kv_a_layernorm, count, rank, eps, cache_rows, row);
      for (int64_t t = 0; t < count; ++t) {
        const int64_t token = first_token[index] + t;
        float* k_pe = cache_rows + t * row + rank;
        std::memcpy(k_pe, s.kv_a.data() + token * row + rank, size_t(rope_dim) * sizeof(float));
        rope_rotate_pairs(k_pe, rope_dim, rope.cos_at(token), rope.sin_at(token));
        for (int64_t h = 0; h < heads; ++h)
          rope_rotate_pairs(s.q.data() + (token * heads + h) * qk + nope, rope_dim, rope.cos_at(token),
                            rope.sin_at(token));
      }
      cache.commit(layer, index);
    }
  });
  // Attention: absorbed for the whole batch when every sequence is (always, when forced);
  // otherwise each sequence by its own mode.
  auto mode_of = [&](size_t index) {
    return forced.value_or(int64_t(batch[index].tokens.size()) <= kSmallBatchMax ? AttentionMode::Absorbed
                                                                                  : AttentionMode::Expanded);
  };
  bool all_absorbed = true;
  for (size_t index = 0; index < batch.size(); ++index) all_absorbed = all_absorbed && mode_of(index) == AttentionMode::Absorbed;
  if (all_absorbed) {
    attend_absorbed(c, w, batch, cache_layers, first_token, s.q.data(), s.attn.data(), s, pool);
  } else {
    for (size_t index = 0; index < batch.size(); ++index) {
      const float* q = s.q.data() + first_token[index] * heads * qk;
      float* attn = s.attn.data() + first_token[index] * heads * v_dim;
      if (mode_of(index) == AttentionMode::Expanded) {
        attend_expanded(c, w, int64_t(batch[index].tokens.size()), batch[index].first_position, cache_layers[index], q,
                        attn, pool);
      } else {
        attend_absorbed(c, w, batch.subspan(index, 1), std::span(cache_layers).subspan(index, 1),
                        std::span(first_token).subspan(index, 2), q, attn, s, pool);
      }
    }
  }
  matmul(pool, s.attn.data(), n_tokens, w.o_proj, out);
}

}  // namespace deepmoe
