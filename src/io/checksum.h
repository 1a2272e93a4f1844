// XXH64 (xxHash, 64-bit, seed 0; Debian's libxxhash): the digest checkpoints store for each of
// their files, so a resume can tell a corrupt file from a good one. `xxhsum -H1 FILE` prints the
// same digest, so a user can check a checkpoint by hand.
#pragma once
#include <cstdint>
#include <span>
#include <string>

namespace deepmoe {

uint64_t xxh64(std::span<const uint8_t> bytes, uint64_t seed = 0);

// "xxh64:" and the digest of the whole file in 16 hex digits. Maps and reads the file; throws
// Error naming the path if it cannot.
std::string file_checksum(const std::string& path);

}  // namespace deepmoe
