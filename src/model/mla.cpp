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

// All heads at once on the latent cache, as multi-query attention with head size rank + rope.
void attend_absorbed(const Config& c, const MlaWeights& w, int64_t n_tokens, int64_t first_position,
                     const float* cache_layer, const float* q, float* attn, MlaScratch& s, ThreadPool& pool) {
  const int64_t heads = c.num_attention_heads, nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim;
  const int64_t rank = c.kv_lora_rank, row = rank + rope, qk = c.qk_head_dim(), v_dim = c.v_head_dim;
  const int64_t length = first_position + n_tokens;
  const int64_t query_rows = n_tokens * heads;
  grow(s.q_latent, query_rows * row);
  pool.parallel_for(heads, 1, [&](int64_t head_begin, int64_t head_end) {
    for (int64_t h = head_begin; h < head_end; ++h) {
      // q_latent[:, h, :rank] = q_nope_h · W_UK_h (W_UK_h is [nope, rank]; we hold its transpose).
      const WeightMatrix w_uk = w.kv_b_proj_keys_transposed.row_slice(h * rank, rank);
      matmul_rows(q + h * qk, heads * qk, n_tokens, w_uk, s.q_latent.data() + h * row, heads * row, 0,
                  rank);
      for (int64_t t = 0; t < n_tokens; ++t)
        std::memcpy(s.q_latent.data() + (t * heads + h) * row + rank, q + (t * heads + h) * qk + nope,
                    size_t(rope) * sizeof(float));
    }
  });
  grow(s.scores, query_rows * length);
  grow(s.out_latent, query_rows * rank);
  // Every query row (token, head) against the whole latent cache, in two passes that each read
  // the cache once: scores by blocks of cached positions, then by blocks of latent columns the
  // softmax (each block normalizes its own copy: cheaper than a third pass's wake-up) and P·c_kv.
  // (Blocks of query rows instead read the cache once per block: decode of V2-Lite's 16 heads
  // read it 4 times per layer.) The blocks are fixed, so the GEMM shapes and hence the rounding
  // do not depend on the thread count.
  constexpr int64_t kPositionsPerBlock = 64, kColumnsPerBlock = 128;
  const float scale = float(c.softmax_scale());
  pool.parallel_for((length + kPositionsPerBlock - 1) / kPositionsPerBlock, 1, [&](int64_t b_begin, int64_t b_end) {
    for (int64_t b = b_begin; b < b_end; ++b) {
      const int64_t first = b * kPositionsPerBlock, count = std::min(length - first, kPositionsPerBlock);
      query_key_scores(query_rows, count, row, scale, s.q_latent.data(), row, cache_layer + first * row, row,
                       s.scores.data() + first, length);
    }
  });
  // out_latent [query_rows, rank] = softmax(scores) · c_kv; one run of blocks per thread, so
  // each thread normalizes the scores once.
  const int64_t column_blocks = (rank + kColumnsPerBlock - 1) / kColumnsPerBlock;
  pool.parallel_for(column_blocks, (column_blocks + pool.size() - 1) / pool.size(), [&](int64_t b_begin, int64_t b_end) {
    thread_local std::vector<float> probabilities;
    grow(probabilities, query_rows * length);
    std::copy_n(s.scores.data(), query_rows * length, probabilities.data());
    causal_softmax(probabilities.data(), query_rows, length, [&](int64_t r) { return first_position + r / heads + 1; });
    for (int64_t b = b_begin; b < b_end; ++b) {
      const int64_t first = b * kColumnsPerBlock, count = std::min(rank - first, kColumnsPerBlock);
      weighted_rows(query_rows, count, length, probabilities.data(), length, cache_layer + first, row,
                    s.out_latent.data() + first, rank);
    }
  });
  pool.parallel_for(heads, 1, [&](int64_t head_begin, int64_t head_end) {
    for (int64_t h = head_begin; h < head_end; ++h) {
      // attn[:, h, :] = out_latent_h · W_UVᵀ, W_UV_h = the value up-projection rows of head h.
      const WeightMatrix w_uv = w.kv_b_proj_values.row_slice(h * w.values_head_stride + w.values_head_offset, v_dim);
      matmul_rows(s.out_latent.data() + h * rank, heads * rank, n_tokens, w_uv, attn + h * v_dim,
                  heads * v_dim, 0, v_dim);
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
  int64_t n_tokens = 0;
  for (const BatchSequence& sequence : batch) n_tokens += int64_t(sequence.tokens.size());

  // q: [n_tokens, heads, nope + rope]
  grow(s.q, n_tokens * heads * qk);
  if (c.q_lora_rank) {
    grow(s.q_lora, n_tokens * *c.q_lora_rank);
    matmul(pool, x, n_tokens, w.q_a_proj, s.q_lora.data());
    rmsnorm(s.q_lora.data(), *c.q_lora_rank, w.q_a_layernorm, n_tokens, *c.q_lora_rank, eps, s.q_lora.data(),
            *c.q_lora_rank);
    matmul(pool, s.q_lora.data(), n_tokens, w.q_b_proj, s.q.data());
  } else {
    matmul(pool, x, n_tokens, w.q_proj, s.q.data());
  }
  // kv_a: [n_tokens, rank + rope] -> cache rows: normalized c_kv, rotated k_pe
  grow(s.kv_a, n_tokens * row);
  matmul(pool, x, n_tokens, w.kv_a_proj_with_mqa, s.kv_a.data());
  grow(s.attn, n_tokens * heads * v_dim);

  int64_t first_token = 0;  // of the current sequence, in the batch
  for (size_t index = 0; index < batch.size(); ++index) {
    const int64_t count = int64_t(batch[index].tokens.size()), first_position = batch[index].first_position;
    float* cache_layer = cache.open(layer, index);
    float* cache_rows = cache_layer + first_position * row;
    rmsnorm(s.kv_a.data() + first_token * row, row, w.kv_a_layernorm, count, rank, eps, cache_rows, row);
    for (int64_t t = 0; t < count; ++t) {
      const int64_t token = first_token + t;
      float* k_pe = cache_rows + t * row + rank;
      std::memcpy(k_pe, s.kv_a.data() + token * row + rank, size_t(rope_dim) * sizeof(float));
      rope_rotate_pairs(k_pe, rope_dim, rope.cos_at(token), rope.sin_at(token));
      for (int64_t h = 0; h < heads; ++h)
        rope_rotate_pairs(s.q.data() + (token * heads + h) * qk + nope, rope_dim, rope.cos_at(token),
                          rope.sin_at(token));
    }
    const float* q = s.q.data() + first_token * heads * qk;
    float* attn = s.attn.data() + first_token * heads * v_dim;
    const AttentionMode mode = forced.value_or(count <= kSmallBatchMax ? AttentionMode::Absorbed : AttentionMode::Expanded);
    if (mode == AttentionMode::Expanded) {
      attend_expanded(c, w, count, first_position, cache_layer, q, attn, pool);
    } else {
      attend_absorbed(c, w, count, first_position, cache_layer, q, attn, s, pool);
    }
    cache.commit(layer, index);
    first_token += count;
  }
  matmul(pool, s.attn.data(), n_tokens, w.o_proj, out);
}

}  // namespace deepmoe
