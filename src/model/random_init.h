// A seeded random checkpoint in HuggingFace format, for tests, the quickstart and training.
#pragma once
#include <cstdint>
#include <string>

#include "core/dtype.h"

namespace deepmoe {

// Reads config_path, writes out_dir/config.json and out_dir/model.safetensors (F32 or BF16).
// Projections ~ N(0, 1/in_features), embeddings ~ N(0, 1), norms ~ 1 + N(0, 0.1²), so a
// random model has well-scaled activations and non-degenerate routing.
void write_random_checkpoint(const std::string& config_path, const std::string& out_dir, uint64_t seed, DType dtype);

}  // namespace deepmoe
