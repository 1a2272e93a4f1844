// NumPy .npy (format 1.0) for arrays the CLI hands to other tools.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace deepmoe {

// Writes a little-endian float32 C-order array atomically.
void write_npy_f32(const std::string& path, const float* data, const std::vector<int64_t>& shape);

}  // namespace deepmoe
