// A model file's bytes held either way (io/mapped_file.h): mapped, or read into anonymous memory
// on 2 MiB boundaries. Both must present exactly the file's bytes, whatever its size.
#include "io/mapped_file.h"

#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <vector>

#include "core/error.h"

namespace deepmoe {
namespace {

namespace fs = std::filesystem;

class MappedFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("deepmoe_mapped_file_test_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  // A file of `size` random bytes; returns them.
  std::vector<uint8_t> write_random(const fs::path& path, size_t size, uint32_t seed) {
    std::vector<uint8_t> bytes(size);
    std::mt19937 random(seed);
    for (auto& b : bytes) b = uint8_t(random());
    std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(size));
    return bytes;
  }
  fs::path dir_;
};

TEST_F(MappedFileTest, ReadIntoMemoryAndMappedHoldTheSameBytes) {
  // Sizes around the 64 MiB read chunks and the 2 MiB pages, so every chunk boundary and tail is hit.
  for (const size_t size : {size_t(1), size_t(4095), (size_t(2) << 20) + 3, (size_t(64) << 20) * 2 + 12345}) {
    const fs::path path = dir_ / std::to_string(size);
    const std::vector<uint8_t> expected = write_random(path, size, uint32_t(size));
    const MappedFile mapped(path.string(), {FileAccess::Map, false});
    const MappedFile read(path.string(), {FileAccess::Read, false});
    EXPECT_FALSE(mapped.read_into_memory());
    EXPECT_TRUE(read.read_into_memory());
    EXPECT_EQ(reinterpret_cast<uintptr_t>(read.bytes().data()) % (size_t(2) << 20), 0u) << "not on a 2 MiB page";
    ASSERT_EQ(read.bytes().size(), size);
    ASSERT_EQ(mapped.bytes().size(), size);
    EXPECT_TRUE(std::equal(expected.begin(), expected.end(), read.bytes().begin())) << size;
    EXPECT_TRUE(std::equal(expected.begin(), expected.end(), mapped.bytes().begin())) << size;
  }
}

TEST_F(MappedFileTest, AutoReadsWhatFitsAndEmptyFilesWorkEitherWay) {
  const fs::path path = dir_ / "small";
  write_random(path, 1000, 1);
  EXPECT_TRUE(MappedFile(path.string(), {FileAccess::Auto, false}).read_into_memory());  // 1000 bytes fit
  std::ofstream(dir_ / "empty").flush();
  for (const FileAccess access : {FileAccess::Map, FileAccess::Read, FileAccess::Auto})
    EXPECT_EQ(MappedFile((dir_ / "empty").string(), {access, false}).bytes().size(), 0u);
  EXPECT_THROW(MappedFile((dir_ / "missing").string(), {FileAccess::Read, false}), Error);
  EXPECT_THROW(MappedFile(dir_.string(), {FileAccess::Read, false}), Error);  // not a regular file
}

TEST_F(MappedFileTest, LockReportsWhetherItLocked) {
  const fs::path path = dir_ / "locked";
  const std::vector<uint8_t> expected = write_random(path, 8192, 2);
  const MappedFile file(path.string(), {FileAccess::Read, true});
  EXPECT_TRUE(std::equal(expected.begin(), expected.end(), file.bytes().begin()));
  rlimit limit{};
  getrlimit(RLIMIT_MEMLOCK, &limit);
  if (::geteuid() == 0 || limit.rlim_cur >= (size_t(1) << 20)) {
    EXPECT_TRUE(file.locked());
  }
  EXPECT_FALSE(MappedFile(path.string(), {FileAccess::Map, false}).locked());
}

}  // namespace
}  // namespace deepmoe
