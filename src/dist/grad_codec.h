// Gradient compression for the data-parallel reduction, with error feedback: a rank sends its
// gradient plus what it failed to send last time (the residual), rounded to bf16 or to int8 with
// one f32 scale per block of kInt8Block elements (absmax / 127), and keeps the new rounding error
// as its residual. Nothing is lost over the steps, only delayed, which is what lets the loss curve
// follow the uncompressed one (1-bit Adam, PowerSGD and DeepSpeed's compressed reductions all
// rely on it). The owner of a shard decodes every rank's payload and adds them in f32, in rank
// order, so every run of the same world size sums the same bits.
#pragma once
#include <cstddef>
#include <span>
#include <string_view>

namespace deepmoe::dist {

enum class GradCompression { None, BF16, Int8 };

// "none", "bf16" or "int8" (the CLI's words); throws Error on anything else.
GradCompression parse_grad_compression(std::string_view name);
const char* grad_compression_name(GradCompression kind);

inline constexpr size_t kInt8Block = 256;

// Bytes of n encoded values: 4n for None, 2n for BF16, n plus a 4-byte scale per started block
// of kInt8Block for Int8.
size_t encoded_bytes(GradCompression kind, size_t n);

// out (encoded_bytes(kind, values.size()) bytes) := the encoding of values + residual, and
// residual := (values + residual) - decode(out): exactly what this encoding lost, carried to the
// next step. Int8 lays out the block scales first, then the values; bytes need no alignment.
void encode_with_feedback(GradCompression kind, std::span<const float> values, std::span<float> residual,
                          std::span<std::byte> out);

// sum[i] += the i-th value `in` encodes (in holds encoded_bytes(kind, sum.size()) bytes).
void decode_add(GradCompression kind, std::span<const std::byte> in, std::span<float> sum);

}  // namespace deepmoe::dist
