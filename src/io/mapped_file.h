// Whole files as bytes: mapped or read into memory (model weights), read as text, and written
// atomically.
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace deepmoe {

// How a model file's bytes are held (llama.cpp's --mmap / --no-mmap / --mlock).
//  Map:  a read-only memory map: nothing is read until touched, and pages are shared with the
//        page cache. Its speed depends on how the file came into the cache: a file just written
//        sits in small pages that stream at a fraction of the speed of the large ones a cold read
//        creates (measured 5 vs 28 GB/s; docs/benchmarks.md, "Weights and the page cache").
//  Read: read at open into anonymous memory in 2 MiB pages: the same speed whatever the page
//        cache held, at the price of reading the whole file first.
//  Auto: Read when the file fits in the memory the kernel says is available (keeping a margin),
//        else Map.
enum class FileAccess { Auto, Map, Read };
struct LoadOptions {
  FileAccess access = FileAccess::Map;
  bool lock = false;  // mlock the bytes (no paging out); a failure is reported, not fatal
};

// A whole file's bytes, read-only, mapped or read into memory (LoadOptions).
class MappedFile {
 public:
  // Opens `path`; throws Error naming the path if it cannot. Read mode reads the whole file on
  // several threads before returning.
  explicit MappedFile(const std::string& path, LoadOptions options = {});
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  std::span<const uint8_t> bytes() const { return {data_, size_}; }
  const std::string& path() const { return path_; }
  bool read_into_memory() const { return read_; }  // else mapped
  bool locked() const { return locked_; }

 private:
  void read_whole(int fd);

  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  void* region_ = nullptr;  // what to unmap: the mapping, or the aligned anonymous region
  size_t region_size_ = 0;
  bool read_ = false, locked_ = false;
};

// Reads a whole (small) text file; throws Error naming the path if it cannot.
std::string read_text_file(const std::string& path);

// Flushes a directory's entries (a file created or renamed in it) to disk: without it a rename
// can be lost in a power cut even though the file's own bytes were flushed. Throws Error naming
// the directory when it cannot be opened or flushed. Filesystems that cannot fsync a directory
// at all (EINVAL, as PostgreSQL's fsync_fname also allows) count as done.
void sync_directory(const std::string& dir);

// A file that appears whole or not at all. It is written under a fresh temporary name beside
// `path` (path.tmp.<pid>.<random>, created with O_EXCL|O_NOFOLLOW, so neither a leftover nor a
// planted symlink nor a second writer of the same path is ever followed or shared); commit()
// flushes it, renames it over `path` and flushes the directory. Destroyed without a successful
// commit() (an error on the way), the temporary is removed and `path` is untouched. The
// descriptor is closed on every path.
class AtomicFile {
 public:
  explicit AtomicFile(const std::string& path);  // throws Error naming the path if it cannot
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  void write(std::span<const uint8_t> bytes);  // throws Error (e.g. a full disk) naming the file
  void commit();                               // throws Error naming the file; then `path` is as it was
  const std::string& temporary_path() const { return temporary_; }

 private:
  void close_descriptor();
  std::string path_, temporary_;
  int fd_ = -1;
  bool committed_ = false;
};

// Writes `bytes` to `path` atomically (an AtomicFile): a reader never sees a half-written file,
// and a crash leaves the old file intact.
void write_file_atomically(const std::string& path, std::span<const uint8_t> bytes);

}  // namespace deepmoe
