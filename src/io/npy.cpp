#include "io/npy.h"

#include <fmt/format.h>

#include <cstring>

#include "io/mapped_file.h"

namespace deepmoe {

void write_npy_f32(const std::string& path, const float* data, const std::vector<int64_t>& shape) {
  size_t count = 1;
  for (int64_t extent : shape) count *= size_t(extent);
  std::string dims;
  for (int64_t extent : shape) dims += fmt::format("{},", extent);
  if (shape.size() > 1) dims.pop_back();  // (n,) keeps its comma; (a, b) does not need one
  std::string header = fmt::format("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}), }}", dims);
  // magic (6) + version (2) + length (2) + header + '\n' must be a multiple of 64.
  while ((10 + header.size() + 1) % 64 != 0) header.push_back(' ');
  header.push_back('\n');
  std::vector<uint8_t> bytes = {
      0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, uint8_t(header.size() & 0xff), uint8_t(header.size() >> 8)};
  bytes.insert(bytes.end(), header.begin(), header.end());
  const size_t offset = bytes.size();
  bytes.resize(offset + count * sizeof(float));
  std::memcpy(bytes.data() + offset, data, count * sizeof(float));
  write_file_atomically(path, bytes);
}

}  // namespace deepmoe
