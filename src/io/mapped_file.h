// A read-only memory map of a whole file (opening maps it; no bytes are read until touched).
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace deepmoe {

class MappedFile {
 public:
  // Maps `path` read-only; throws Error naming the path if it cannot.
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  std::span<const uint8_t> bytes() const { return {data_, size_}; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Reads a whole (small) text file; throws Error naming the path if it cannot.
std::string read_text_file(const std::string& path);

// A file that appears whole or not at all: written under `path`.tmp, then commit() flushes it to
// disk and renames it over `path`. Destroyed without commit() (an error on the way), the
// temporary is removed and `path` is untouched.
class AtomicFile {
 public:
  explicit AtomicFile(const std::string& path);  // throws Error naming the path if it cannot
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  void write(std::span<const uint8_t> bytes);  // throws Error (e.g. a full disk) naming the file
  void commit();

 private:
  std::string path_, temporary_;
  int fd_ = -1;
};

// Writes `bytes` to `path` atomically: a temporary file in the same folder, fsync, rename.
// A reader never sees a half-written file, and a crash leaves the old file intact.
void write_file_atomically(const std::string& path, std::span<const uint8_t> bytes);

}  // namespace deepmoe
