// Token windows: a data-parallel rank's share of a step (TokenWindows::windows) holds exactly the
// windows one process trains on in that step, wherever the share starts and ends in its batches.
#include "io/token_windows.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace deepmoe {
namespace {

class TokenWindowsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = std::filesystem::temp_directory_path() / ("deepmoe_windows_" + std::to_string(::getpid()) + ".u32");
    std::ofstream out(path_, std::ios::binary);
    for (uint32_t i = 0; i < 500; ++i) out.write(reinterpret_cast<const char*>(&i), sizeof i);
  }
  void TearDown() override { std::filesystem::remove(path_); }
  std::filesystem::path path_;
};

TEST_F(TokenWindowsTest, SharesOfAStepAreTheOneProcessWindows) {
  for (const WindowOrder order : {WindowOrder::Random, WindowOrder::Sequential}) {
    const TokenWindows w(path_.string(), 8, order, 7);
    const int64_t batch = 4, accum = 3, seq = 8;  // a step: 12 windows in 3 batches of 4
    std::vector<int32_t> in, target, all_in, all_target;
    for (int64_t micro = 0; micro < accum; ++micro) {
      w.batch(5 * accum + micro, batch, in, target);  // step 5
      all_in.insert(all_in.end(), in.begin(), in.end());
      all_target.insert(all_target.end(), target.begin(), target.end());
    }
    // Shares of 3 windows (4 ranks) and 6 (2 ranks), cutting across the batches of 4.
    for (const int64_t share : {3, 6}) {
      for (int64_t first = 0; first < batch * accum; first += share) {
        w.windows(5 * batch * accum + first, share, batch, in, target);
        const auto from = all_in.begin() + first * seq, to = from + share * seq;
        EXPECT_TRUE(std::equal(in.begin(), in.end(), from, to)) << "share " << share << " at " << first;
        EXPECT_TRUE(std::equal(target.begin(), target.end(), all_target.begin() + first * seq));
      }
    }
  }
}

}  // namespace
}  // namespace deepmoe
