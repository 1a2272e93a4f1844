#include "io/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>
#include <utility>
#include <vector>

#include "core/error.h"

namespace deepmoe {

namespace {

constexpr size_t kHugePage = size_t(2) << 20;

// MemAvailable of /proc/meminfo in bytes (0 when unknown).
size_t available_memory() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  size_t kib = 0;
  while (meminfo >> key >> kib) {
    if (key == "MemAvailable:") return kib * 1024;
    meminfo.ignore(256, '\n');
  }
  return 0;
}

// Read when the file leaves an eighth of the available memory (at least 1 GiB) free.
FileAccess resolve(FileAccess access, size_t size) {
  if (access != FileAccess::Auto) return access;
  const size_t available = available_memory();
  const size_t margin = std::max(available / 8, size_t(1) << 30);
  return available > margin && size <= available - margin ? FileAccess::Read : FileAccess::Map;
}

}  // namespace

MappedFile::MappedFile(const std::string& path, LoadOptions options) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("{}: cannot open: {}", path, std::strerror(errno));
  struct stat info {};
  if (::fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) {
    ::close(fd);
    fail("{}: not a regular file", path);
  }
  size_ = size_t(info.st_size);
  read_ = resolve(options.access, size_) == FileAccess::Read;
  if (size_ > 0 && read_) {
    try {
      read_whole(fd);
    } catch (...) {
      ::close(fd);
      throw;
    }
  } else if (size_ > 0) {
    void* mapped = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (mapped == MAP_FAILED) {
      const int error = errno;
      ::close(fd);
      fail("{}: cannot mmap: {}", path, std::strerror(error));
    }
    region_ = mapped;
    region_size_ = size_;
    data_ = static_cast<const uint8_t*>(mapped);
    // Hints only, so failures are ignored. Large pages (where the filesystem gives them) keep
    // TLB misses off decode's path; early readahead fills the cache in large sequential pieces.
    ::madvise(mapped, size_, MADV_HUGEPAGE);
    ::madvise(mapped, size_, MADV_WILLNEED);
  }
  ::close(fd);
  if (options.lock && size_ > 0) locked_ = ::mlock(data_, size_) == 0;
}

// Anonymous memory on 2 MiB boundaries with MADV_HUGEPAGE, filled by pread on a few threads
// (faulting in zeroed huge pages is much of the cost, and it parallelizes), then made read-only.
void MappedFile::read_whole(int fd) {
  region_size_ = (size_ + kHugePage - 1) / kHugePage * kHugePage + kHugePage;
  void* region =
      ::mmap(nullptr, region_size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (region == MAP_FAILED)
    fail("{}: cannot allocate {} bytes to read it into: {}", path_, size_, std::strerror(errno));
  region_ = region;
  uint8_t* data =
      reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(region) + kHugePage - 1) / kHugePage * kHugePage);
  ::madvise(data, region_size_ - size_t(data - static_cast<uint8_t*>(region)), MADV_HUGEPAGE);
  data_ = data;
  const size_t chunk = size_t(64) << 20;
  const size_t chunks = (size_ + chunk - 1) / chunk;
  const size_t threads = std::min<size_t>({chunks, std::max(1u, std::thread::hardware_concurrency()), 8});
  std::atomic<size_t> next{0};
  std::atomic<int> error{0};
  auto work = [&] {
    for (size_t c = next++; c < chunks && error == 0; c = next++) {
      const size_t begin = c * chunk, end = std::min(size_, begin + chunk);
      // Fault the huge pages in first: faulting them inside pread's copy measured 2-4x slower.
      for (size_t page = begin; page < end; page += kHugePage) data[page] = 0;
      for (size_t at = begin; at < end;) {
        const ssize_t got = ::pread(fd, data + at, end - at, off_t(at));
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) {
          error = got < 0 ? errno : EIO;  // 0: the file shrank under us
          return;
        }
        at += size_t(got);
      }
    }
  };
  std::vector<std::thread> pool;
  for (size_t t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (std::thread& thread : pool) thread.join();
  if (error != 0) {
    ::munmap(region_, region_size_);
    region_ = nullptr;
    data_ = nullptr;
    fail("{}: cannot read it: {}", path_, std::strerror(error));
  }
  ::mprotect(region_, region_size_, PROT_READ);
}

MappedFile::~MappedFile() {
  if (region_) ::munmap(region_, region_size_);
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open: {}", path, std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

void sync_directory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) fail("{}: cannot open the directory to flush it: {}", dir, std::strerror(errno));
  const int result = ::fsync(fd);
  const int error = errno;
  ::close(fd);
  if (result != 0 && error != EINVAL) fail("{}: cannot flush the directory to disk: {}", dir, std::strerror(error));
}

AtomicFile::AtomicFile(const std::string& path) : path_(path) {
  // A fresh name per writer: a fixed "path.tmp" would be shared by two writers of one path and
  // would follow a symlink someone left there. O_EXCL makes the name ours or fails, so retry.
  std::random_device entropy;
  for (int attempt = 0; attempt < 100 && fd_ < 0; ++attempt) {
    temporary_ = fmt::format("{}.tmp.{}.{:08x}", path, ::getpid(), uint32_t(entropy()));
    fd_ = ::open(temporary_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd_ < 0 && errno != EEXIST) break;
  }
  if (fd_ < 0) fail("{}: cannot create: {}", temporary_, std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  close_descriptor();
  if (!committed_) ::unlink(temporary_.c_str());
}

void AtomicFile::close_descriptor() {
  if (fd_ >= 0) ::close(std::exchange(fd_, -1));
}

void AtomicFile::write(std::span<const uint8_t> bytes) {
  if (fd_ < 0) fail("{}: write after commit", temporary_);
  size_t written = 0;
  while (written < bytes.size()) {
    const ssize_t n = ::write(fd_, bytes.data() + written, bytes.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("{}: write failed: {}", temporary_, std::strerror(errno));
    }
    written += size_t(n);
  }
}

void AtomicFile::commit() {
  if (fd_ < 0) fail("{}: committed twice", path_);
  if (::fsync(fd_) != 0) {
    const int error = errno;
    close_descriptor();  // the destructor removes the temporary
    fail("{}: cannot flush to disk: {}", temporary_, std::strerror(error));
  }
  // close() releases the descriptor even when it reports an error (Linux), so never retry it.
  if (::close(std::exchange(fd_, -1)) != 0) fail("{}: cannot flush to disk: {}", temporary_, std::strerror(errno));
  if (::rename(temporary_.c_str(), path_.c_str()) != 0)
    fail("{}: cannot rename into place: {}", path_, std::strerror(errno));
  committed_ = true;
  const std::string dir = std::filesystem::path(path_).parent_path().string();
  sync_directory(dir.empty() ? "." : dir);
}

void write_file_atomically(const std::string& path, std::span<const uint8_t> bytes) {
  AtomicFile file(path);
  file.write(bytes);
  file.commit();
}

}  // namespace deepmoe
