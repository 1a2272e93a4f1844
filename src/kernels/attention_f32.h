// The two products of decode attention against a cache: scores of a few query rows against
// many cached rows, and the probability-weighted sum of cached rows. For a handful of query rows
// (one token's heads) OpenBLAS spent most of its time packing both operands (measured: 15 % of a
// V2-Lite decode step after 512 tokens on one thread); these read each operand once from cache,
// with a fixed summation order per output (so results do not depend on how callers split the
// work). More than 64 query rows go to OpenBLAS, unless batch_invariant (the server), which
// computes every row as it would alone.
#pragma once
#include <cstdint>

namespace deepmoe {

// c[i, j] = alpha · Σ_k a[i, k] · b[j, k]   for i < m, j < n (row-major, strides in floats).
void query_key_scores(bool batch_invariant, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                      const float* b, int64_t ldb, float* c, int64_t ldc);

// c[i, :n] = Σ_{p < k} a[i, p] · b[p, :n]   for i < m.
void weighted_rows(bool batch_invariant, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                   int64_t ldb, float* c, int64_t ldc);

}  // namespace deepmoe
