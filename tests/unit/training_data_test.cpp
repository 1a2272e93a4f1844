// Pretraining's data as the Trainer takes it: a mixture of token files drawn by weight, the same
// windows however a step is cut into micro-batches or ranks, and mixture flags checked.
#include "train/training_data.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"

namespace deepmoe::train {
namespace {

namespace fs = std::filesystem;

// A token file whose every token is `value`.
std::string token_file(const std::string& name, uint32_t value, size_t n) {
  const fs::path path = fs::temp_directory_path() / (name + "_" + std::to_string(getpid()) + ".u32");
  std::vector<uint32_t> tokens(n, value);
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(tokens.data()), std::streamsize(n * 4));
  return path.string();
}

TEST(TokenWindowData, AMixtureDrawsEachFileByItsWeightTheSameWayEveryTime) {
  const std::string a = token_file("mix_a", 1, 4000), b = token_file("mix_b", 2, 4000);
  const std::string mixture = a + ":0.7," + b + ":0.3";
  TokenWindowData data(mixture, "", 8, 4, WindowOrder::Random, 11);
  const MicroBatch all = data.train_batch(0, 2000, 2000);
  int64_t from_a = 0;
  for (int64_t w = 0; w < 2000; ++w) from_a += all.inputs[size_t(w * 8)] == 1 ? 1 : 0;
  EXPECT_NEAR(double(from_a) / 2000.0, 0.7, 0.04);  // 0.7 ± 4.4 binomial standard deviations
  // The same windows cut into micro-batches (a rank's share), and from another object with the same seed.
  TokenWindowData again(mixture, "", 8, 4, WindowOrder::Random, 11);
  const MicroBatch part = again.train_batch(1500, 300, 2000);
  EXPECT_TRUE(std::equal(part.inputs.begin(), part.inputs.end(), all.inputs.begin() + 1500 * 8));
  // Another seed, another draw.
  TokenWindowData other(mixture, "", 8, 4, WindowOrder::Random, 12);
  EXPECT_NE(other.train_batch(0, 2000, 2000).inputs, all.inputs);
  fs::remove(a);
  fs::remove(b);
}

TEST(TokenWindowData, MixtureFlagsAreChecked) {
  EXPECT_EQ(parse_data_sources("x.u32").size(), 1u);
  const auto two = parse_data_sources("a.u32:2,b.u32");
  ASSERT_EQ(two.size(), 2u);
  EXPECT_EQ(two[0].path, "a.u32");
  EXPECT_EQ(two[0].weight, 2.0);
  EXPECT_EQ(two[1].weight, 1.0);
  for (const char* bad : {"a.u32:0", "a.u32:-1", "a.u32:x", "a.u32:", ",b.u32"})
    EXPECT_THROW(parse_data_sources(bad), Error) << bad;
  const std::string a = token_file("mix_c", 1, 100), b = token_file("mix_d", 2, 100);
  EXPECT_THROW(TokenWindowData(a + "," + b, "", 8, 4, WindowOrder::Sequential, 1), Error);
  fs::remove(a);
  fs::remove(b);
}

}  // namespace
}  // namespace deepmoe::train
