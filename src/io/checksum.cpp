#include "io/checksum.h"

#include <fmt/format.h>
#include <xxhash.h>

#include "io/mapped_file.h"

namespace deepmoe {

uint64_t xxh64(std::span<const uint8_t> bytes, uint64_t seed) { return XXH64(bytes.data(), bytes.size(), seed); }

std::string file_checksum(const std::string& path) {
  const MappedFile file(path);
  return fmt::format("xxh64:{:016x}", xxh64(file.bytes()));
}

}  // namespace deepmoe
