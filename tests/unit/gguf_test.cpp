// GGUF: what the writer writes, the parser reads back; every kind of corruption is one clear
// Error (never a crash: these also run under ASan); llama.cpp's block codecs behave as its
// reference quantizers do.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "core/dtype.h"
#include "core/error.h"
#include "io/gguf.h"
#include "kernels/ggml_blocks.h"
#include "test_util.h"
#include "tokenizer/gguf_tokenizer.h"

namespace deepmoe {
namespace {

std::vector<uint8_t> f32_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> out(v.size() * 4);
  std::memcpy(out.data(), v.data(), out.size());
  return out;
}

GgufWriter sample_writer() {
  GgufWriter w;
  w.add("general.architecture", GgufValue::string("deepseek2"));
  w.add("deepseek2.block_count", GgufValue::u32(3));
  w.add("deepseek2.rope.freq_base", GgufValue::f32(10000.0f));
  w.add("deepseek2.expert_weights_norm", GgufValue::boolean(true));
  w.add("tokenizer.ggml.tokens", GgufValue::string_array({"a", "Ġb", "<｜end▁of▁sentence｜>"}));
  w.add("tokenizer.ggml.token_type", GgufValue::i32_array({1, 1, 3}));
  w.add_tensor("blk.0.attn_norm.weight", GgmlType::F32, {5}, f32_bytes(testing::random_vector(5, 1)));
  std::vector<uint8_t> q(2 * kQ8_0BlockBytes);
  quantize_q8_0(testing::random_vector(64, 2).data(), 64, q.data());
  w.add_tensor("blk.0.ffn_up_exps.weight", GgmlType::Q8_0, {32, 1, 2}, q);
  return w;
}

TEST(Gguf, WhatTheWriterWritesParsesBack) {
  const auto bytes = sample_writer().serialize();
  const GgufFile f = parse_gguf(bytes, "mem.gguf");
  EXPECT_EQ(f.version, 3u);
  EXPECT_EQ(f.get_string("general.architecture"), "deepseek2");
  EXPECT_EQ(f.get_u32("deepseek2.block_count"), 3u);
  EXPECT_EQ(f.find("deepseek2.block_count")->type, GgufValueType::U32);
  EXPECT_FLOAT_EQ(f.get_f32("deepseek2.rope.freq_base"), 10000.0f);
  EXPECT_TRUE(f.find("deepseek2.expert_weights_norm")->bool_value);
  EXPECT_EQ(f.find("tokenizer.ggml.tokens")->strings, (std::vector<std::string>{"a", "Ġb", "<｜end▁of▁sentence｜>"}));
  EXPECT_EQ(f.find("tokenizer.ggml.token_type")->ints, (std::vector<int64_t>{1, 1, 3}));
  ASSERT_EQ(f.tensors.size(), 2u);
  const GgufTensor* norm = f.find_tensor("blk.0.attn_norm.weight");
  ASSERT_NE(norm, nullptr);
  EXPECT_EQ(norm->dims, (std::vector<int64_t>{5}));
  EXPECT_EQ(std::memcmp(norm->data, f32_bytes(testing::random_vector(5, 1)).data(), 20), 0);
  const GgufTensor* experts = f.find_tensor("blk.0.ffn_up_exps.weight");
  ASSERT_NE(experts, nullptr);
  EXPECT_EQ(experts->type, GgmlType::Q8_0);
  EXPECT_EQ(experts->n_bytes, size_t(2 * kQ8_0BlockBytes));
  // Tensor data start on the alignment, at sequential offsets (what llama.cpp insists on).
  EXPECT_EQ((experts->data - bytes.data()) % 32, 0);
  EXPECT_EQ(experts->data - norm->data, 32);
}

// Each corruption of a valid file, and the words its error must contain.
TEST(Gguf, CorruptFilesGiveOneClearError) {
  const auto good = sample_writer().serialize();
  const GgufFile f = parse_gguf(good, "mem.gguf");
  // Offsets of fields inside `good`, found by layout: magic 0, version 4, tensor count 8, kv count 16.
  const auto patch = [&](size_t at, const void* value, size_t n) {
    auto bad = good;
    std::memcpy(bad.data() + at, value, n);
    return bad;
  };
  const auto expect = [](const std::vector<uint8_t>& bytes, const std::string& words) {
    try {
      parse_gguf(bytes, "bad.gguf");
      ADD_FAILURE() << "no error for: " << words;
    } catch (const Error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("bad.gguf"), std::string::npos) << what;
      EXPECT_NE(what.find(words), std::string::npos) << what << " (wanted: " << words << ")";
      EXPECT_EQ(what.find('\n'), std::string::npos) << what;
    }
  };
  const uint32_t bad_magic = 0x46554746, v1 = 1, v9 = 9;
  const uint64_t huge = uint64_t(1) << 60;
  expect(patch(0, &bad_magic, 4), "bad magic");
  expect(patch(4, &v1, 4), "version 1");
  expect(patch(4, &v9, 4), "version 9");
  expect(patch(8, &huge, 8), "tensors cannot fit");
  expect(patch(16, &huge, 8), "key/values cannot fit");
  expect(std::vector<uint8_t>(good.begin(), good.begin() + 3), "truncated");
  expect(std::vector<uint8_t>(good.begin(), good.begin() + 100), "cannot fit");
  expect(std::vector<uint8_t>(good.begin(), good.begin() + 200), "truncated");
  // The data of the last tensor cut off.
  expect(std::vector<uint8_t>(good.begin(), good.end() - 40), "outside the file");

  // Field-level corruptions, made by writing files with the bad value.
  const auto with = [](auto edit) {
    GgufWriter w;
    edit(w);
    return w.serialize();
  };
  expect(with([](GgufWriter& w) {
           w.add("k", GgufValue::u32(1));
           w.add("k", GgufValue::u32(2));
         }),
         "duplicate key k");
  expect(with([](GgufWriter& w) {
           w.add_tensor("t", GgmlType::F32, {1}, std::vector<uint8_t>(4));
           w.add_tensor("t", GgmlType::F32, {1}, std::vector<uint8_t>(4));
         }),
         "duplicate tensor t");
  {  // the second tensor's offset moved back onto the first's data
    auto two = with([](GgufWriter& w) {
      w.add_tensor("a", GgmlType::F32, {8}, std::vector<uint8_t>(32));
      w.add_tensor("b", GgmlType::F32, {8}, std::vector<uint8_t>(32));
    });
    // Layout: preamble 24; "a": name 9, n_dims 4, dim 8, type 4, offset 8 (ends at 57); "b" likewise: offset at 82.
    const uint64_t onto_a = 0;
    ASSERT_EQ(parse_gguf(two, "ok.gguf").tensors.size(), 2u);
    std::memcpy(two.data() + 82, &onto_a, 8);
    expect(two, "tensors a and b overlap");
  }
  expect(with([](GgufWriter& w) { w.add("general.alignment", GgufValue::u32(48)); }), "power of two");
  expect(with([](GgufWriter& w) { w.add("general.alignment", GgufValue::string("32")); }), "must be a u32");
  expect(with([](GgufWriter& w) { w.add("", GgufValue::u32(1)); }), "empty key");

  // Raw edits of a one-tensor file: its tensor info sits at the end of the header.
  const auto one = with([](GgufWriter& w) { w.add_tensor("t", GgmlType::F32, {4, 2}, std::vector<uint8_t>(32)); });
  // Layout: 24-byte preamble, then name (8 + 1), n_dims (4) at 33, dims at 37 and 45, type at 53, offset at 57.
  ASSERT_EQ(parse_gguf(one, "ok.gguf").tensors[0].dims, (std::vector<int64_t>{4, 2}));
  const auto edit = [&](size_t at, const void* value, size_t n) {
    auto bad = one;
    std::memcpy(bad.data() + at, value, n);
    return bad;
  };
  const uint32_t five_dims = 5, type_q4k = 12, type_q8 = 8, type_huge = 0xffffffff;
  const uint64_t zero = 0, big_dim = uint64_t(1) << 40, far = uint64_t(1) << 62, unaligned = 3;
  expect(edit(33, &five_dims, 4), "5 dimensions");
  expect(edit(37, &zero, 8), "empty or too large");
  expect(edit(45, &big_dim, 8), "outside the file");
  {
    auto bad = edit(37, &big_dim, 8);
    std::memcpy(bad.data() + 45, &big_dim, 8);  // 2^80 elements: the product overflows
    expect(bad, "empty or too large");
  }
  expect(edit(53, &type_q4k, 4), "ggml type 12 is not supported");
  expect(edit(53, &type_huge, 4), "is not supported");
  expect(edit(53, &type_q8, 4), "whole number of 32-value q8_0 blocks");
  expect(edit(57, &far, 8), "outside the file");
  expect(edit(57, &unaligned, 8), "not aligned");
  {
    const uint32_t bad_value_type = 13, array_of_arrays = 9;
    auto kv = with([](GgufWriter& w) { w.add("k", GgufValue::u32(7)); });
    auto typed = kv;
    std::memcpy(typed.data() + 24 + 8 + 1, &bad_value_type, 4);
    expect(typed, "unknown value type 13");
    auto nested = with([](GgufWriter& w) { w.add("k", GgufValue::i32_array({1})); });
    std::memcpy(nested.data() + 24 + 8 + 1 + 4, &array_of_arrays, 4);
    expect(nested, "arrays of arrays");
    auto long_array = with([](GgufWriter& w) { w.add("k", GgufValue::i32_array({1})); });
    std::memcpy(long_array.data() + 24 + 8 + 1 + 8, &huge, 8);
    expect(long_array, "does not fit");
    auto long_string = with([](GgufWriter& w) { w.add("k", GgufValue::string("abc")); });
    std::memcpy(long_string.data() + 24 + 8 + 1 + 4, &huge, 8);
    expect(long_string, "truncated");
  }
  (void)f;
}

// u8, i8 and bool arrays are held one byte per element: widened to int64 they let a file make us
// hold 8 bytes for each of its own. A length beyond the file is refused before any allocation.
TEST(Gguf, OneByteArraysStayOneBytePerElement) {
  const auto byte_array = [](GgufValueType type, std::vector<uint8_t> bytes) {
    GgufValue v;
    v.type = GgufValueType::Array;
    v.element_type = type;
    v.bytes = std::move(bytes);
    return v;
  };
  GgufWriter w;
  w.add("u8", byte_array(GgufValueType::U8, {0, 7, 255}));
  w.add("i8", byte_array(GgufValueType::I8, {0x80, 0xff, 1}));
  w.add("bool", byte_array(GgufValueType::Bool, {1, 0, 1}));
  w.add("big", byte_array(GgufValueType::U8, std::vector<uint8_t>(1 << 20, 3)));
  auto bytes = w.serialize();
  const GgufFile f = parse_gguf(bytes, "mem.gguf");
  EXPECT_EQ(f.find("u8")->bytes, (std::vector<uint8_t>{0, 7, 255}));
  EXPECT_EQ(f.find("i8")->bytes, (std::vector<uint8_t>{0x80, 0xff, 1}));
  EXPECT_EQ(f.find("bool")->bytes, (std::vector<uint8_t>{1, 0, 1}));
  EXPECT_TRUE(f.find("u8")->ints.empty());
  EXPECT_EQ(f.find("big")->bytes.capacity(), size_t(1) << 20);
  // A bool stored as 2 reads as true.
  const size_t first_bool = 24 + (8 + 2) + 4 + 4 + 8 + 3 + (8 + 2) + 4 + 4 + 8 + 3 + (8 + 4) + 4 + 4 + 8;
  ASSERT_EQ(bytes[first_bool], 1);
  bytes[first_bool] = 2;
  EXPECT_EQ(parse_gguf(bytes, "mem.gguf").find("bool")->bytes[0], 1);

  GgufWriter one;
  one.add("k", byte_array(GgufValueType::U8, {1}));
  auto lying = one.serialize();
  const uint64_t huge = uint64_t(1) << 40;
  std::memcpy(lying.data() + 24 + 8 + 1 + 4 + 4, &huge, 8);  // the element count
  try {
    parse_gguf(lying, "bad.gguf");
    ADD_FAILURE() << "an array of 2^40 u8 in a " << lying.size() << "-byte file was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("key k: array of 1099511627776 elements does not fit"), std::string::npos)
        << e.what();
  }
}

// Found by fuzz_gguf_tokenizer: a token that is not UTF-8 escaped as nlohmann's type_error
// (not an Error, so no one-line message) when the rebuilt tokenizer.json was dumped.
TEST(Gguf, ATokenizerThatIsNotUtf8IsOneClearError) {
  GgufWriter w;
  w.add("tokenizer.ggml.model", GgufValue::string("gpt2"));
  w.add("tokenizer.ggml.tokens", GgufValue::string_array({"a", "b\xff"}));
  w.add("tokenizer.ggml.merges", GgufValue::string_array({}));
  const GgufFile f = parse_gguf(w.serialize(), "bad-utf8.gguf");
  try {
    tokenizer_from_gguf(f);
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad-utf8.gguf"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("UTF-8"), std::string::npos) << e.what();
  }
}

TEST(GgmlBlocks, F16RoundsToNearestEvenAndRoundTripsEveryHalf) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float v = f16_to_f32(uint16_t(h));
    if (std::isnan(v)) {
      EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(v))));
      continue;
    }
    ASSERT_EQ(f32_to_f16(v), uint16_t(h)) << "half " << h;
  }
  // Halfway between 1 and the next half (1 + 2^-10): ties go to the even neighbour, 1.
  EXPECT_EQ(f32_to_f16(1.0f + 0.00048828125f), f32_to_f16(1.0f));
  // Halfway between 1 + 2^-10 (odd) and 1 + 2^-9: up to the even one.
  EXPECT_EQ(f32_to_f16(1.0f + 3 * 0.00048828125f), f32_to_f16(1.0f + 2 * 0.0009765625f));
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);  // past the largest half: infinity
  EXPECT_EQ(f32_to_f16(65519.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(-1e-8f), 0x8000);  // underflow keeps the sign
}

TEST(GgmlBlocks, Q8_0AndQ4_0DecodeWithinTheirStepOfTheInput) {
  // Awkward data: tiny, huge and zero blocks, a block of one repeated value, random rows.
  std::vector<float> x = testing::random_vector(32 * 40, 9, 2.0f);
  for (int j = 0; j < 32; ++j) x[size_t(j)] = 0.0f;
  for (int j = 32; j < 64; ++j) x[size_t(j)] = 1e-6f * float(j - 48);
  for (int j = 64; j < 96; ++j) x[size_t(j)] = 3e4f;
  std::vector<uint8_t> q8(40 * kQ8_0BlockBytes), q4(40 * kQ4_0BlockBytes);
  std::vector<float> y8(x.size()), y4(x.size());
  quantize_q8_0(x.data(), int64_t(x.size()), q8.data());
  quantize_q4_0(x.data(), int64_t(x.size()), q4.data());
  dequantize_q8_0(q8.data(), int64_t(x.size()), y8.data());
  dequantize_q4_0(q4.data(), int64_t(x.size()), y4.data());
  const auto stored_scale = [](const uint8_t* block) {
    return std::fabs(f16_to_f32(uint16_t(block[0] | (block[1] << 8))));
  };
  for (size_t b = 0; b < 40; ++b) {
    float amax = 0;
    for (size_t j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[b * 32 + j]));
    // The scale is computed in f32 and stored as f16 (underflowing for tiny blocks): levels are
    // chosen with the f32 scale and decoded with the stored one, so the error bound carries
    // levels × the scale's rounding.
    const float d8 = amax / 127, d4 = amax / 8;
    const float drift8 = std::fabs(stored_scale(&q8[b * kQ8_0BlockBytes]) - d8);
    const float drift4 = std::fabs(stored_scale(&q4[b * kQ4_0BlockBytes]) - d4);
    for (size_t j = 0; j < 32; ++j) {
      const size_t i = b * 32 + j;
      // Q8_0 rounds to a step of amax/127: half a step off at most. Q4_0's 16 levels run from
      // −8d to 7d with −8d the extreme element, so the opposite sign clips: a whole step of
      // amax/8 at most.
      EXPECT_LE(std::fabs(y8[i] - x[i]), d8 * 0.5f * (1 + 1e-5f) + 127 * drift8 + 1e-30f) << i;
      EXPECT_LE(std::fabs(y4[i] - x[i]), d4 * (1 + 1e-5f) + 8 * drift4 + 1e-30f) << i;
    }
  }
  // The extreme element of a Q4_0 block is exact up to f16 rounding of d: it maps to level 0.
  EXPECT_NEAR(y4[64], 3e4f, 3e4f * 1e-3f);
  EXPECT_EQ(q4[2 * kQ4_0BlockBytes + 2] & 0x0f, 0);
}

TEST(GgmlBlocks, Q4_0KeepsElementJInTheLowNibbleAndJPlus16InTheHigh) {
  std::vector<float> x(32);
  for (int j = 0; j < 32; ++j) x[size_t(j)] = float(j < 16 ? -8 + j : j - 24);  // -8..7 then -8..7
  x[0] = -8.0f;                                                                 // the extreme: d = -8 / -8 = 1
  std::vector<uint8_t> q(kQ4_0BlockBytes);
  quantize_q4_0(x.data(), 32, q.data());
  EXPECT_EQ(f16_to_f32(uint16_t(q[0] | (q[1] << 8))), 1.0f);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(q[size_t(2 + j)] & 0x0f, j) << j;  // x[j] = j - 8 → level j
    EXPECT_EQ(q[size_t(2 + j)] >> 4, j) << j;    // x[j + 16] = j - 8 → level j
  }
}

}  // namespace
}  // namespace deepmoe
