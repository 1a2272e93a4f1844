#include "io/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "io/mapped_file.h"

namespace deepmoe {
namespace {

std::vector<uint8_t> with_header(const std::string& json, size_t data_bytes) {
  std::vector<uint8_t> bytes;
  bytes.reserve(8 + json.size() + data_bytes);
  for (int i = 0; i < 8; ++i) bytes.push_back(uint8_t(uint64_t(json.size()) >> (8 * i)));
  for (char ch : json) bytes.push_back(uint8_t(ch));
  bytes.resize(bytes.size() + data_bytes, 0x11);
  return bytes;
}

// The parser must reject this file with a message that contains `expected`.
void expect_rejected(const std::vector<uint8_t>& bytes, const std::string& expected) {
  try {
    parse_safetensors(bytes, "bad.safetensors");
    FAIL() << "accepted a malformed file; expected an error containing: " << expected;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("bad.safetensors"), std::string::npos) << e.what();
  }
}

TEST(SafetensorsTest, RoundTripKeepsNamesShapesAndBytes) {
  const std::vector<float> a = {1.5f, -2.0f, 3.25f, 4.0f, 5.0f, 6.0f};
  const std::vector<uint16_t> b = {0x3f80, 0xc000, 0x1234};
  const auto bytes =
      serialize_safetensors({{"a.weight", DType::F32, {2, 3}, {reinterpret_cast<const uint8_t*>(a.data()), 24}},
                             {"b", DType::BF16, {3}, {reinterpret_cast<const uint8_t*>(b.data()), 6}}});
  const auto views = parse_safetensors(bytes, "ok.safetensors");
  ASSERT_EQ(views.size(), 2u);
  for (const auto& view : views) {
    EXPECT_EQ(reinterpret_cast<uintptr_t>(view.data) % 8, 0u) << "data should start 8-byte aligned";
    if (view.name == "a.weight") {
      EXPECT_EQ(view.shape, (std::vector<int64_t>{2, 3}));
      EXPECT_EQ(std::memcmp(view.data, a.data(), 24), 0);
    } else {
      EXPECT_EQ(view.dtype, DType::BF16);
      EXPECT_EQ(std::memcmp(view.data, b.data(), 6), 0);
    }
  }
}

TEST(SafetensorsTest, RejectsMalformedFilesWithTheReason) {
  expect_rejected({1, 2, 3}, "too short");
  expect_rejected({0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f}, "exceeds");
  auto truncated_header = with_header(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4);
  truncated_header.resize(20);
  expect_rejected(truncated_header, "exceeds the file size");
  expect_rejected(with_header("{not json", 0), "not valid JSON");
  expect_rejected(with_header("[1,2]", 0), "not a JSON object");
  expect_rejected(with_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4), "outside");
  expect_rejected(with_header(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8), "need 12");
  expect_rejected(with_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8), "outside");
  expect_rejected(with_header(R"({"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}})", 8), "unsupported dtype Q4");
  expect_rejected(with_header(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8), "non-integer");
  expect_rejected(
      with_header(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}})", 8),
      "too large");
  expect_rejected(with_header(R"({"a":{"dtype":"F32","shape":[2]}})", 8), "data_offsets");
  expect_rejected(with_header(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", 8), "dtype");
  expect_rejected(with_header(R"({"a":[1]})", 8), "not an object");
}

// A zero extent made the element count 0, and the extents after it went unchecked: 2^63 became a
// negative int64 in the shape, and [0, 2^62, 4] a shape whose other products overflow.
TEST(SafetensorsTest, EveryExtentIsCheckedEvenAfterAZero) {
  expect_rejected(with_header(R"({"a":{"dtype":"F32","shape":[0,9223372036854775808],"data_offsets":[0,0]}})", 0),
                  "tensor a: shape holds 9223372036854775808, more than a 64-bit signed integer holds");
  expect_rejected(with_header(R"({"a":{"dtype":"F32","shape":[0,4611686018427387904,4],"data_offsets":[0,0]}})", 0),
                  "tensor a: shape is too large");
  expect_rejected(with_header(R"({"a":{"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,0]}})", 0),
                  "tensor a: shape is too large");
  expect_rejected(
      with_header(R"({"a":{"dtype":"F32","shape":[0,1099511627776,1099511627776],"data_offsets":[0,0]}})", 0),
      "tensor a: shape is too large");
  const auto empty = parse_safetensors(
      with_header(R"({"a":{"dtype":"F32","shape":[0,1099511627776],"data_offsets":[0,0]}})", 0), "empty.safetensors");
  ASSERT_EQ(empty.size(), 1u);
  EXPECT_EQ(empty[0].shape, (std::vector<int64_t>{0, int64_t(1) << 40}));
  EXPECT_EQ(empty[0].numel(), 0);
  EXPECT_EQ(empty[0].n_bytes, 0u);
}

TEST(CheckpointReaderTest, ReadsShardsThroughTheIndexAndRejectsBadIndexes) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / "deepmoe_checkpoint_reader_test";
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::vector<float> values = {1, 2, 3, 4};
  for (const char* name : {"one", "two"}) {
    const auto bytes =
        serialize_safetensors({{name, DType::F32, {4}, {reinterpret_cast<const uint8_t*>(values.data()), 16}}});
    write_file_atomically((dir / (std::string(name) + ".safetensors")).string(), bytes);
  }
  auto write_index = [&](const std::string& text) {
    write_file_atomically((dir / "model.safetensors.index.json").string(),
                          {reinterpret_cast<const uint8_t*>(text.data()), text.size()});
  };
  write_index(R"({"weight_map": {"one": "one.safetensors", "two": "two.safetensors"}})");
  CheckpointReader reader(dir.string());
  ASSERT_NE(reader.find("one"), nullptr);
  ASSERT_NE(reader.find("two"), nullptr);
  EXPECT_EQ(reader.find("three"), nullptr);

  write_index(R"({"weight_map": {"one": "two.safetensors"}})");
  EXPECT_THROW(CheckpointReader{dir.string()}, Error);
  write_index(R"({"weight_map": {"one": "../one.safetensors"}})");
  EXPECT_THROW(CheckpointReader{dir.string()}, Error);
  write_index(R"({"weight_map": {"one": "missing.safetensors"}})");
  EXPECT_THROW(CheckpointReader{dir.string()}, Error);
  write_index("{]");
  EXPECT_THROW(CheckpointReader{dir.string()}, Error);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace deepmoe
