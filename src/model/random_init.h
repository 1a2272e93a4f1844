// A seeded random checkpoint in HuggingFace format, for tests, the quickstart and training.
#pragma once
#include <cstdint>
#include <string>

#include "core/dtype.h"
#include "model/tensor_list.h"

namespace deepmoe {

// Reads config_path, writes out_dir/config.json and out_dir/model.safetensors (F32 or BF16).
// Projections ~ N(0, 1/in_features), embeddings ~ N(0, 1), norms ~ 1 + N(0, 0.1²), so a
// random model has well-scaled activations and non-degenerate routing.
void write_random_checkpoint(const std::string& config_path, const std::string& out_dir, uint64_t seed, DType dtype);

// One tensor's t.numel() values from the same distributions, drawn by a generator of its own
// seeded by `seed` and the tensor's name: they do not depend on which other tensors are drawn (a
// module added to a trained model gets the same values on every rank).
void fill_random(const TensorInfo& t, uint64_t seed, float* out);

}  // namespace deepmoe
