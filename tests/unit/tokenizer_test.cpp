// Tokenizer building blocks against independent rules: the Unicode standard's UTF-8 repair
// examples, the White_Space property list, a naive BPE merge loop, HF's added-token semantics.
// Whole-tokenizer exactness against HF is tests/e2e/tokenizer_vs_hf.sh.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <map>

#include <random>

#include "core/error.h"
#include "tokenizer/added_tokens.h"
#include "tokenizer/bpe.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/regex.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace deepmoe {
namespace {

const std::string kFFFD = "\xEF\xBF\xBD";

TEST(Utf8Test, RepairsLikeTheUnicodeStandardBestPractice) {
  // Unicode 14, section 3.9, U+FFFD substitution of maximal subparts (table 3-8 style cases).
  EXPECT_EQ(utf8::sanitize("a\xF0\x9F\x98"
                           "b"),
            "a" + kFFFD + "b");                                                  // truncated 4-byte: one
  EXPECT_EQ(utf8::sanitize("\xC0\xAF"), kFFFD + kFFFD);                          // overlong: two
  EXPECT_EQ(utf8::sanitize("\xED\xA0\x80"), kFFFD + kFFFD + kFFFD);              // surrogate: three
  EXPECT_EQ(utf8::sanitize("\xF4\x90\x80\x80"), kFFFD + kFFFD + kFFFD + kFFFD);  // > U+10FFFF: four
  EXPECT_EQ(utf8::sanitize("\xE1\x80\xE2\xF0\x91\x92\xF1\xBF\x41"), kFFFD + kFFFD + kFFFD + kFFFD + "A");
  EXPECT_EQ(utf8::sanitize("valid é 😀"), "valid é 😀");
  EXPECT_TRUE(utf8::is_incomplete_sequence("x\xE4\xB8", 1));
  EXPECT_FALSE(utf8::is_incomplete_sequence("x\xE4\x41", 1));
}

TEST(ByteLevelTest, MapsEveryByteAndBack) {
  EXPECT_EQ(byte_level::char_for_byte(' '), "Ġ");
  EXPECT_EQ(byte_level::char_for_byte('\n'), "Ċ");
  EXPECT_EQ(byte_level::char_for_byte('A'), "A");
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(char(b));
  std::string back;
  ASSERT_TRUE(byte_level::decode(byte_level::encode(all), back));
  EXPECT_EQ(back, all);
  std::string out;
  EXPECT_FALSE(byte_level::decode("<｜User｜>", out));  // '｜' is not in the alphabet
}

TEST(RegexTest, WhitespaceIsExactlyTheWhiteSpaceProperty) {
  // Oniguruma's \s (what HF's Rust tokenizers use): White_Space; not U+FEFF, U+200B or U+180E.
  const Regex space(R"(\s)");
  const char32_t spaces[] = {0x09,   0x0A,   0x0B,   0x0C,   0x0D,   0x20,   0x85,   0xA0,
                             0x1680, 0x2000, 0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000};
  const char32_t others[] = {0xFEFF, 0x200B, 0x180E, 0x2060, 'x', 0x1F600};
  std::vector<std::pair<size_t, size_t>> matches;
  for (const char32_t cp : spaces) {
    std::string s;
    utf8::append(s, cp);
    matches.clear();
    space.find_all(s, matches);
    EXPECT_EQ(matches.size(), 1u) << "U+" << std::hex << uint32_t(cp);
  }
  for (const char32_t cp : others) {
    std::string s;
    utf8::append(s, cp);
    matches.clear();
    space.find_all(s, matches);
    EXPECT_TRUE(matches.empty()) << "U+" << std::hex << uint32_t(cp);
  }
}

TEST(RegexTest, WordClassIncludesMarksAndEmptyMatchesAdvance) {
  std::vector<std::pair<size_t, size_t>> matches;
  Regex(R"(\w+)").find_all("e\xCC\x81t\xC3\xA9 x", matches);  // e + U+0301 combining acute
  ASSERT_EQ(matches.size(), 2u);
  EXPECT_EQ(matches[0], (std::pair<size_t, size_t>{0, 6}));
  matches.clear();
  Regex("x*").find_all("a\xC3\xA9", matches);  // empty matches at 0, 1, 3
  EXPECT_EQ(matches.size(), 3u);
  EXPECT_THROW(Regex("(unclosed"), Error);
  EXPECT_THROW(Regex(R"([^\S])"), Error);  // negated class escape inside a class: refused, named
}

// The textbook loop: merge the lowest-ranked adjacent pair (leftmost on ties) until none is left.
std::vector<std::string> naive_bpe(std::vector<std::string> symbols,
                                   const std::map<std::pair<std::string, std::string>, int>& ranks) {
  while (true) {
    int best = INT32_MAX;
    size_t at = 0;
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      const auto it = ranks.find({symbols[i], symbols[i + 1]});
      if (it != ranks.end() && it->second < best) best = it->second, at = i;
    }
    if (best == INT32_MAX) return symbols;
    symbols[at] += symbols[at + 1];
    symbols.erase(symbols.begin() + long(at) + 1);
  }
}

TEST(BpeTest, MatchesNaiveMergeLoopOnRandomWordsShortAndLong) {
  std::mt19937 rng(7);
  TokenIds vocab;
  for (int b = 0; b < 256; ++b) vocab.emplace(byte_level::char_for_byte(uint8_t(b)), b);
  // Random merges over a 4-letter alphabet, building longer tokens from existing ones.
  std::vector<std::string> tokens = {"a", "b", "c", "d"};
  std::vector<std::pair<std::string, std::string>> merges;
  std::map<std::pair<std::string, std::string>, int> ranks;
  while (merges.size() < 60) {
    const std::string& l = tokens[rng() % tokens.size()];
    const std::string& r = tokens[rng() % tokens.size()];
    if (ranks.count({l, r}) || (l + r).size() > 6) continue;
    ranks[{l, r}] = int(merges.size());
    merges.emplace_back(l, r);
    if (!vocab.count(l + r)) vocab.emplace(l + r, int32_t(vocab.size()));
    tokens.push_back(l + r);
  }
  std::vector<std::pair<std::string_view, std::string_view>> views(merges.begin(), merges.end());
  const BpeModel model(vocab, views, false);
  for (int trial = 0; trial < 400; ++trial) {
    const size_t length = trial % 2 ? 1 + rng() % 12 : 40 + rng() % 200;  // both merge loops
    std::string word;
    std::vector<std::string> symbols;
    for (size_t i = 0; i < length; ++i) {
      word.push_back("abcd"[rng() % 4]);
      symbols.emplace_back(1, word.back());
    }
    std::vector<int32_t> ids;
    model.encode_word(word, ids);
    std::vector<std::string> got;
    for (const int32_t id : ids) got.push_back(model.id_to_token(id));
    ASSERT_EQ(got, naive_bpe(symbols, ranks)) << word;
  }
}

TEST(AddedTokensTest, LeftmostLongestWithStripAndSingleWord) {
  AddedToken a{100, "<a>"}, ab{101, "<a><b>"}, strip{102, "<s>"}, word{103, "cat"};
  strip.lstrip = strip.rstrip = true;
  word.single_word = true;
  const AddedTokenMatcher matcher({a, ab, strip, word});
  const auto spans = matcher.split("x<a><b>y<a>z  <s>  w cat concat");
  std::vector<std::pair<std::string, int32_t>> got;
  const std::string text = "x<a><b>y<a>z  <s>  w cat concat";
  for (const auto& s : spans) got.emplace_back(text.substr(s.begin, s.end - s.begin), s.token_id);
  const std::vector<std::pair<std::string, int32_t>> expected = {{"x", -1},    {"<a><b>", 101}, {"y", -1},
                                                                 {"<a>", 100}, {"z", -1},       {"  <s>  ", 102},
                                                                 {"w ", -1},   {"cat", 103},    {" concat", -1}};
  EXPECT_EQ(got, expected);
}

// A byte-level tokenizer.json small enough to write inline: 256 bytes, a few merges, added tokens.
std::string tiny_tokenizer_json(const std::string& model_type = "BPE") {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_level::char_for_byte(uint8_t(b))] = b;
  vocab["Ġh"] = 256;
  vocab["Ġhi"] = 257;
  nlohmann::json j = {{"model", {{"type", model_type}, {"vocab", vocab}, {"merges", {"Ġ h", "Ġh i"}}}},
                      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
                      {"decoder", {{"type", "ByteLevel"}}},
                      {"added_tokens", {{{"id", 258}, {"content", "<|end|>"}, {"special", true}}}}};
  return j.dump();
}

// Finding 18.3.8 (/detokenize 500'd on a vocabulary hole) and 18.3.2 (ids past the tokenizer):
// spells() says which ids decode, so the server refuses or never samples the others.
TEST(TokenizerTest, SpellsExactlyTheIdsItCanDecode) {
  nlohmann::json j = nlohmann::json::parse(tiny_tokenizer_json());
  j["added_tokens"][0]["id"] = 300;  // ids 258..299: a hole
  const auto t = Tokenizer::from_json(j.dump(), "", "holes");
  EXPECT_EQ(t->id_limit(), 301);
  for (int32_t id = -2; id < 310; ++id) {
    const bool decodes = [&] {
      try {
        t->token_bytes(id);
        return true;
      } catch (const Error&) {
        return false;
      }
    }();
    EXPECT_EQ(t->spells(id), decodes) << id;
    EXPECT_EQ(t->spells(id), (id >= 0 && id < 258) || id == 300) << id;
  }
}

TEST(TokenizerTest, EncodesDecodesAndStreamsWholeCharacters) {
  const auto t = Tokenizer::from_json(tiny_tokenizer_json(), "", "tiny");
  EXPECT_EQ(t->encode(" hi<|end|>"), (std::vector<int32_t>{257, 258}));
  EXPECT_EQ(t->decode(t->encode("héllo 😀")), "héllo 😀");
  EXPECT_EQ(t->decode(std::vector<int32_t>{257, 258}, true), " hi");
  EXPECT_THROW(t->decode(std::vector<int32_t>{9999}), Error);

  // "é" is two byte tokens: the first alone must not be emitted.
  StreamingDecoder stream(*t);
  EXPECT_EQ(stream.push(0xC3), "");
  EXPECT_EQ(stream.push(0xA9), "é");
  EXPECT_EQ(stream.push(0xF0), "");
  EXPECT_EQ(stream.push('x'), kFFFD + "x");  // the held byte can no longer be completed
  EXPECT_EQ(stream.push(0xE4), "");
  EXPECT_EQ(stream.finish(), kFFFD);
}

TEST(TokenizerTest, RejectsWhatItDoesNotSupportByName) {
  const auto error_of = [](const std::string& json) {
    try {
      Tokenizer::from_json(json, "", "t.json");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(error_of(tiny_tokenizer_json("Unigram")).find("Unigram"), std::string::npos);
  EXPECT_NE(error_of("{\"model\": 3").find("not valid JSON"), std::string::npos);
  auto j = nlohmann::json::parse(tiny_tokenizer_json());
  j["model"]["merges"] = {"Ġ zz"};
  EXPECT_NE(error_of(j.dump()).find("zz"), std::string::npos);
  j = nlohmann::json::parse(tiny_tokenizer_json());
  j["normalizer"] = {{"type", "NFKC"}};
  EXPECT_NE(error_of(j.dump()).find("NFKC"), std::string::npos);
  j = nlohmann::json::parse(tiny_tokenizer_json());
  j["model"]["vocab"].erase("Ġ");
  EXPECT_NE(error_of(j.dump()).find("0x20"), std::string::npos);
}

// Ids are int32 and so is one past the largest: 2^32 + 5 was read as 5, and 2147483647 made the
// id limit (id + 1) overflow.
TEST(TokenizerTest, RejectsIdsOutsideInt32ByName) {
  const auto error_of = [](const nlohmann::json& j) {
    try {
      Tokenizer::from_json(j.dump(), "", "t.json");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  for (const int64_t id : {(int64_t(1) << 32) + 5, int64_t(INT32_MAX), int64_t(-1)}) {
    auto j = nlohmann::json::parse(tiny_tokenizer_json());
    j["added_tokens"] = {{{"id", id}, {"content", "<|big|>"}, {"special", true}}};
    const std::string what = error_of(j);
    EXPECT_NE(what.find("added_tokens[0] ('<|big|>') has id " + std::to_string(id)), std::string::npos) << what;
  }
  auto j = nlohmann::json::parse(tiny_tokenizer_json());
  j["added_tokens"] = {{{"id", uint64_t(1) << 63}, {"content", "<|big|>"}}};
  EXPECT_NE(error_of(j).find("has id 9223372036854775808"), std::string::npos);
  j = nlohmann::json::parse(tiny_tokenizer_json());
  j["model"]["vocab"]["Ġhi"] = INT32_MAX;
  EXPECT_NE(error_of(j).find("model.vocab['Ġhi'] must be an integer id in [0, 2147483647)"), std::string::npos);
  j = nlohmann::json::parse(tiny_tokenizer_json());
  j["post_processor"] = {{"type", "TemplateProcessing"},
                         {"single", {{{"SpecialToken", {{"id", "<s>"}}}}, {{"Sequence", {{"id", "A"}}}}}},
                         {"special_tokens", {{"<s>", {{"ids", {(int64_t(1) << 32) + 1}}}}}}};
  EXPECT_NE(error_of(j).find("special token '<s>' has id 4294967297"), std::string::npos) << error_of(j);
  j["post_processor"]["special_tokens"]["<s>"]["ids"] = {258};
  EXPECT_EQ(Tokenizer::from_json(j.dump(), "", "t.json")->encode("hi", true).front(), 258);
}

}  // namespace
}  // namespace deepmoe
