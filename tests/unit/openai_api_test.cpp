// The OpenAI request parser (every bad field a 400 naming it), a choice's text (whole
// characters only, stop strings cut even when split across tokens, held back while they might
// still match and released once they cannot), and the response objects and stream chunks.
#include "serve/openai_api.h"

#include <gtest/gtest.h>

#include <random>

#include "tokenizer/byte_level.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace deepmoe {
namespace {

// Byte-level BPE whose ids 0..255 are the bytes themselves: a text's bytes are its tokens, so
// every character of more than one byte arrives split across tokens.
std::unique_ptr<Tokenizer> byte_tokenizer() {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_level::char_for_byte(uint8_t(b))] = b;
  const nlohmann::json j = {
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"added_tokens", {{{"id", 256}, {"content", "<|end|>"}, {"special", true}}}}};
  return Tokenizer::from_json(j.dump(), "", "bytes");
}

// Pushes text byte by byte; returns the released pieces.
std::vector<std::string> feed(ChoiceText& choice, const std::string& text) {
  std::vector<std::string> pieces;
  for (unsigned char byte : text) pieces.push_back(choice.push(int32_t(byte)));
  return pieces;
}

std::string joined(const std::vector<std::string>& pieces) {
  std::string all;
  for (const auto& piece : pieces) all += piece;
  return all;
}

TEST(ChoiceText, CutsAStopStringSplitAcrossTokensAndNeverSplitsACharacter) {
  const auto tokenizer = byte_tokenizer();
  ChoiceText choice(*tokenizer, {"ld ö", "never"});
  const auto pieces = feed(choice, "héllo wörld öx tail");
  for (const std::string& piece : pieces) EXPECT_EQ(utf8::sanitize(piece), piece) << "a piece split a character";
  EXPECT_EQ(joined(pieces), "héllo wör");
  EXPECT_TRUE(choice.stopped());
  EXPECT_EQ(choice.push('z'), "");
  EXPECT_EQ(choice.finish(), "");
}

TEST(ChoiceText, HoldsBackWhatMayStillBecomeAStopStringAndReleasesItWhenItCannot) {
  const auto tokenizer = byte_tokenizer();
  ChoiceText choice(*tokenizer, {"wxyz"});
  EXPECT_EQ(choice.push('a'), "a");
  EXPECT_EQ(choice.push('w'), "");
  EXPECT_EQ(choice.push('x'), "");
  EXPECT_EQ(choice.push('q'), "wxq");
  EXPECT_EQ(choice.push('w'), "");
  EXPECT_EQ(choice.finish(), "w");  // no more tokens: it can no longer match
  EXPECT_FALSE(choice.stopped());
}

TEST(ChoiceText, TheEarliestOfSeveralStopStringsWins) {
  const auto tokenizer = byte_tokenizer();
  ChoiceText choice(*tokenizer, {"cde", "bcdef", "b"});
  EXPECT_EQ(joined(feed(choice, "abcdefg")), "a");
  ChoiceText overlapping(*tokenizer, {"aab"});
  EXPECT_EQ(joined(feed(overlapping, "xaaab")), "xa");
}

TEST(ChoiceText, SkipsSpecialTokensAndWithoutStopStringsReleasesAtOnce) {
  const auto tokenizer = byte_tokenizer();
  ChoiceText choice(*tokenizer, {});
  EXPECT_EQ(choice.push('h'), "h");
  EXPECT_EQ(choice.push(256), "");
  EXPECT_EQ(choice.push(0xC3), "");
  EXPECT_EQ(choice.push(0xA9), "é");
}

class ParseRequest : public ::testing::Test {
 protected:
  ParseRequest()
      : tokenizer_(byte_tokenizer()),
        template_("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}") {
    limits_.model_id.assign(1, 'm');  // (= "m" trips GCC 12's -Wrestrict false positive)
    limits_.context = 64;
  }
  CompletionRequest parse(const std::string& body, bool chat) {
    return parse_completion_request(body, chat, limits_, *tokenizer_, &template_);
  }
  // The param of the ApiError the body causes ("" when it parses).
  std::string error_param(const std::string& body, bool chat = false) {
    try {
      parse(body, chat);
    } catch (const ApiError& e) {
      EXPECT_EQ(e.status(), 400) << body;
      EXPECT_NE(std::string(e.what()).find(e.param().empty() ? "" : e.param()), std::string::npos);
      return e.param().empty() ? "(none)" : e.param();
    }
    return "";
  }
  std::unique_ptr<Tokenizer> tokenizer_;
  ChatTemplate template_;
  ApiLimits limits_;
};

TEST_F(ParseRequest, ReadsEveryField) {
  const CompletionRequest r = parse(
      R"({"model": "m", "prompt": "abc", "max_tokens": 5, "temperature": 0.5, "top_p": 0.9, "top_k": 7, "min_p": 0.1,
          "seed": 42, "stop": ["x", "yz"], "logprobs": 3, "n": 2, "stream": true, "stream_options": {"include_usage": true}})",
      false);
  EXPECT_EQ(r.prompts, (std::vector<std::vector<int32_t>>{{'a', 'b', 'c'}}));
  EXPECT_EQ(r.max_tokens, 5);
  EXPECT_FLOAT_EQ(r.sampling.temperature, 0.5f);
  EXPECT_FLOAT_EQ(r.sampling.top_p, 0.9f);
  EXPECT_EQ(r.sampling.top_k, 7);
  EXPECT_FLOAT_EQ(r.sampling.min_p, 0.1f);
  EXPECT_TRUE(r.seeded);
  EXPECT_EQ(r.sampling.seed, 42u);
  EXPECT_EQ(r.stop, (std::vector<std::string>{"x", "yz"}));
  EXPECT_TRUE(r.logprobs);
  EXPECT_EQ(r.top_logprobs, 3);
  EXPECT_EQ(r.n, 2);
  EXPECT_TRUE(r.stream && r.include_usage);

  const CompletionRequest chat = parse(R"({"messages": [{"role": "system", "content": "s"},
      {"role": "user", "content": [{"type": "text", "text": "hi"}]}], "max_completion_tokens": 3, "logprobs": true,
      "top_logprobs": 2})",
                                       true);
  EXPECT_EQ(tokenizer_->decode(chat.prompts.at(0)), "<system>s<user>hi");
  EXPECT_EQ(chat.max_tokens, 3);
  EXPECT_EQ(chat.top_logprobs, 2);
  EXPECT_EQ(parse(R"({"prompt": [1, 2, 3]})", false).max_tokens, 61);              // the rest of the context
  EXPECT_FLOAT_EQ(parse(R"({"prompt": "a"})", false).sampling.temperature, 1.0f);  // OpenAI's default
}

TEST_F(ParseRequest, NamesTheFieldOfEveryBadValue) {
  EXPECT_EQ(error_param("not json"), "(none)");
  EXPECT_EQ(error_param("[1, 2]"), "(none)");
  EXPECT_EQ(error_param(R"({"prompt": "a", "model": "other"})"), "model");
  EXPECT_EQ(error_param(R"({"prompt": "a", "model": 3})"), "model");
  EXPECT_EQ(error_param(R"({})"), "prompt");
  EXPECT_EQ(error_param(R"({"prompt": ""})"), "prompt");
  EXPECT_EQ(error_param(R"({"prompt": 5})"), "prompt");
  EXPECT_EQ(error_param(R"({"prompt": ["a", 3]})"), "prompt[1]");
  EXPECT_EQ(error_param(R"({"prompt": [[1, 2], [3, 999]]})"), "prompt[1][1]");
  EXPECT_EQ(error_param(R"({"prompt": [[1], []]})"), "prompt");
  EXPECT_EQ(error_param(R"({"prompt": [1, [2]]})"), "prompt[1]");
  EXPECT_EQ(error_param(R"({"prompt": [1, 999]})"), "prompt[1]");
  std::string too_long = R"({"prompt": ")";
  too_long.append(64, 'a').append(R"("})");
  EXPECT_EQ(error_param(too_long), "prompt");  // longer than the context
  EXPECT_EQ(error_param(R"({"prompt": "a", "max_tokens": 0})"), "max_tokens");
  EXPECT_EQ(error_param(R"({"prompt": "a", "max_tokens": 64})"), "max_tokens");  // cannot fit
  EXPECT_EQ(error_param(R"({"prompt": "a", "max_tokens": "5"})"), "max_tokens");
  EXPECT_EQ(error_param(R"({"prompt": "a", "max_tokens": 2.5})"), "max_tokens");
  EXPECT_EQ(error_param(R"({"prompt": "a", "max_completion_tokens": -1})"), "max_completion_tokens");
  EXPECT_EQ(error_param(R"({"prompt": "a", "temperature": 2.5})"), "temperature");
  EXPECT_EQ(error_param(R"({"prompt": "a", "temperature": "hot"})"), "temperature");
  EXPECT_EQ(error_param(R"({"prompt": "a", "top_p": 0})"), "top_p");
  EXPECT_EQ(error_param(R"({"prompt": "a", "top_p": 1.5})"), "top_p");
  EXPECT_EQ(error_param(R"({"prompt": "a", "top_k": -2})"), "top_k");
  EXPECT_EQ(error_param(R"({"prompt": "a", "min_p": 2})"), "min_p");
  EXPECT_EQ(error_param(R"({"prompt": "a", "seed": "x"})"), "seed");
  EXPECT_EQ(error_param(R"({"prompt": "a", "stop": 3})"), "stop");
  EXPECT_EQ(error_param(R"({"prompt": "a", "stop": [""]})"), "stop");
  EXPECT_EQ(error_param(R"({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]})"), "stop");
  EXPECT_EQ(error_param(R"({"prompt": "a", "n": 0})"), "n");
  EXPECT_EQ(error_param(R"({"prompt": "a", "n": 100})"), "n");
  EXPECT_EQ(error_param(R"({"prompt": "a", "logprobs": 50})"), "logprobs");
  EXPECT_EQ(error_param(R"({"prompt": "a", "stream": "yes"})"), "stream");
  EXPECT_EQ(error_param(R"({"prompt": "a", "stream_options": {"include_usage": true}})"), "stream_options");
  EXPECT_EQ(error_param(R"({"prompt": "a", "echo": true, "stream": true})"), "echo");
  EXPECT_EQ(error_param(R"({"prompt": "a", "echo": "yes"})"), "echo");
  EXPECT_EQ(error_param(R"({"messages": [{"role": "user", "content": "x"}], "echo": true})", true), "echo");
  EXPECT_EQ(error_param(R"({"prompt": "a", "echo": true, "max_tokens": 0})"), "");  // the prompt's logprobs only
  EXPECT_EQ(error_param(R"({"prompt": "a", "frequency_penalty": 0.5})"), "frequency_penalty");
  EXPECT_EQ(error_param(R"({"messages": []})", true), "messages");
  EXPECT_EQ(error_param(R"({"messages": "hi"})", true), "messages");
  EXPECT_EQ(error_param(R"({})", true), "messages");
  EXPECT_EQ(error_param(R"({"messages": [{"role": "wizard", "content": "x"}]})", true), "messages[0].role");
  EXPECT_EQ(error_param(R"({"messages": [{"role": "user"}]})", true), "messages[0].content");
  EXPECT_EQ(error_param(R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})", true),
            "messages[0].content[0]");
  EXPECT_EQ(error_param(R"({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})", true),
            "top_logprobs");
  EXPECT_EQ(error_param(R"({"messages": [{"role": "user", "content": "x"}], "logprobs": 2})", true), "logprobs");
  EXPECT_EQ(error_param(R"({"messages": [{"role": "user", "content": "x"}], "tools": []})", true), "tools");
  EXPECT_EQ(error_param(R"({"prompt": "a", "max_tokens": null, "seed": null})"), "");  // null is absent
}

// Finding 18.3.1: 10^6 nested brackets in response_format killed the server (nlohmann copies and
// compares recursively). Refused with a 400 before anything walks it; brackets in strings do not count.
// A batch of prompts (lm-evaluation-harness's local-completions sends token-id arrays so), each
// with n choices; max_tokens must fit the longest.
TEST_F(ParseRequest, ReadsABatchOfPrompts) {
  const CompletionRequest ids =
      parse(R"({"prompt": [[97, 98], [99]], "echo": true, "logprobs": 1, "max_tokens": 0})", false);
  EXPECT_EQ(ids.prompts, (std::vector<std::vector<int32_t>>{{'a', 'b'}, {'c'}}));
  EXPECT_TRUE(ids.echo);
  EXPECT_EQ(ids.max_tokens, 0);
  const CompletionRequest texts = parse(R"({"prompt": ["ab", "c"], "n": 2})", false);
  EXPECT_EQ(texts.prompts, (std::vector<std::vector<int32_t>>{{'a', 'b'}, {'c'}}));
  std::string many = R"({"prompt": [)";
  for (int i = 0; i < 33; ++i) many += i ? ",[1]" : "[1]";
  EXPECT_EQ(error_param(many + "]}"), "prompt");
}

TEST_F(ParseRequest, RefusesDeepNestingBeforeWalkingIt) {
  const int deep = 1000000;
  const std::string nested = R"({"prompt":"a","max_tokens":2,"response_format":{"type":)" + std::string(deep, '[') +
                             std::string(deep, ']') + "}}";
  EXPECT_EQ(error_param(nested), "(none)");
  std::string chat =
      R"({"messages":[{"role":"user","content":)" + std::string(deep, '[') + std::string(deep, ']') + "}]}";
  EXPECT_EQ(error_param(chat, true), "(none)");
  EXPECT_THROW(parse_json_object(std::string(kMaxJsonNesting + 1, '[') + std::string(kMaxJsonNesting + 1, ']')),
               ApiError);
  EXPECT_TRUE(
      parse_json_object("{\"a\":" + std::string(kMaxJsonNesting - 1, '[') + std::string(kMaxJsonNesting - 1, ']') + "}")
          .is_object());
  const std::string brackets_in_text = R"({"prompt": ")" + std::string(5000, '[') + R"(\"{{{"})";
  EXPECT_TRUE(parse_json_object(brackets_in_text).is_object());
}

// Finding 18.3.5: prompt + max_tokens overflowed for max_tokens near INT64_MAX and was accepted.
TEST_F(ParseRequest, RefusesMaxTokensThatOverflow) {
  EXPECT_EQ(error_param(R"({"prompt": "abc", "max_tokens": 9223372036854775807})"), "max_tokens");
  EXPECT_EQ(error_param(R"({"prompt": "abc", "max_tokens": 9223372036854775806})"), "max_tokens");
  EXPECT_EQ(error_param(R"({"prompt": "abc", "max_completion_tokens": 9223372036854775807})"), "max_completion_tokens");
  EXPECT_EQ(error_param(R"({"prompt": "abc", "max_tokens": 18446744073709551615})"), "max_tokens");
  EXPECT_EQ(parse(R"({"prompt": "abc", "max_tokens": 61})", false).max_tokens, 61);  // exactly fills the context
}

// Finding 18.3.6: stop strings of any length (a quadratic hold-back scan) and a prompt of
// megabytes tokenized before the context check.
TEST_F(ParseRequest, BoundsStopStringsAndPromptTextBeforeTokenizing) {
  const std::string longest(size_t(limits_.max_stop_bytes), 'x');
  EXPECT_EQ(error_param(R"({"prompt": "a", "stop": [")" + longest + R"("]})"), "");
  EXPECT_EQ(error_param(R"({"prompt": "a", "stop": [")" + longest + R"(x"]})"), "stop");
  EXPECT_EQ(error_param(R"({"prompt": "a", "stop": ")" + longest + R"(x"})"), "stop");
  limits_.max_prompt_bytes = prompt_byte_bound(*tokenizer_, limits_.context);
  EXPECT_EQ(limits_.max_prompt_bytes, 64 * 7);  // the longest token: "<|end|>"
  const std::string huge(size_t(4) << 20, 'a');
  bool refused_fast = false;
  try {
    parse(R"({"prompt": ")" + huge + R"("})", false);
  } catch (const ApiError& e) {
    refused_fast = std::string(e.what()).find("bytes of prompt text") != std::string::npos;
  }
  EXPECT_TRUE(refused_fast) << "refused by the byte bound, not after tokenizing";
  EXPECT_EQ(error_param(R"({"messages": [{"role": "user", "content": ")" + huge + R"("}]})", true), "messages");
  EXPECT_EQ(error_param(R"({"prompt": ")" + std::string(40, 'a') + R"("})"), "");
}

// The hold-back is the longest unreleased tail that starts a stop string, and the earliest
// match in the text so far wins: checked against a direct search on random text over a tiny
// alphabet (where stop strings overlap themselves and each other most).
TEST(ChoiceText, StreamsTheSameTextAsADirectSearch) {
  const auto tokenizer = byte_tokenizer();
  std::mt19937 random(7);
  auto word = [&](size_t length) {
    std::string s;
    for (size_t i = 0; i < length; ++i) s += char('a' + random() % 2);
    return s;
  };
  for (int trial = 0; trial < 2000; ++trial) {
    std::vector<std::string> stops;
    for (int k = 0; k < 1 + int(random() % 3); ++k) stops.push_back(word(1 + random() % 6));
    const std::string text = word(random() % 40);
    // The choice ends when the first stop string is complete, at the earliest match in the text so far.
    size_t cut = std::string::npos;
    for (size_t end = 1; end <= text.size() && cut == std::string::npos; ++end)
      for (const std::string& stop : stops) cut = std::min(cut, text.substr(0, end).find(stop));
    ChoiceText choice(*tokenizer, stops);
    std::string released;
    for (size_t i = 0; i < text.size() && !choice.stopped(); ++i) {
      const std::string piece = choice.push(int32_t(uint8_t(text[i])));
      released += piece;
      // Nothing is held back that cannot start a stop string.
      size_t hold = 0;
      for (const std::string& stop : stops) {
        for (size_t length = std::min(stop.size() - 1, i + 1 - released.size()); length > 0; --length) {
          if (text.compare(i + 1 - length, length, stop, 0, length) == 0) {
            hold = std::max(hold, length);
            break;
          }
        }
      }
      if (!choice.stopped()) {
        ASSERT_EQ(released.size(), i + 1 - hold) << text;
      }
    }
    released += choice.finish();
    ASSERT_EQ(released, text.substr(0, cut)) << text << " stops " << ::testing::PrintToString(stops);
  }
}

// The response builders, field by field. Choice 0 streams "h", "i" and ends at max_tokens;
// choice 1 streams "y", holds "w" back (it might start a stop string) and releases it at the end.
class ResponseJson : public ::testing::Test {
 protected:
  static EngineToken token(char c, float logprob) {
    return {int32_t(c), logprob, {{int32_t(c), logprob}, {'z', -3.0f}}};
  }
  ResponseIds ids(bool chat) const { return {chat ? "chatcmpl-1" : "cmpl-1", 1700000000, "tiny", chat}; }
  std::vector<ChoiceDelta> deltas() const {
    return {{0, "h", token('h', -0.5f), std::nullopt, {}, {}},
            {1, "y", token('y', -0.25f), std::nullopt, {}, {}},
            {0, "i", token('i', -1.0f), FinishReason::Length, {}, {}},
            {1, "", token('w', -2.0f), std::nullopt, {}, {}},
            {1, "w", std::nullopt, FinishReason::Stop, {}, {}}};
  }
  const Usage usage_{7, 3, 4};
  std::unique_ptr<Tokenizer> tokenizer_ = byte_tokenizer();
};

TEST_F(ResponseJson, UsageCountsTheTotalAndTheCachedPromptTokens) {
  EXPECT_EQ(usage_json(usage_), nlohmann::json::parse(R"({"prompt_tokens": 7, "completion_tokens": 3,
      "total_tokens": 10, "prompt_tokens_details": {"cached_tokens": 4}})"));
}

TEST_F(ResponseJson, CompletionHasEachChoicesTextFinishReasonAndLogprobs) {
  const nlohmann::json expected = nlohmann::json::parse(R"({
    "id": "cmpl-1", "object": "text_completion", "created": 1700000000, "model": "tiny",
    "choices": [
      {"index": 0, "text": "hi", "finish_reason": "length",
       "logprobs": {"tokens": ["h", "i"], "token_logprobs": [-0.5, -1.0],
                    "top_logprobs": [{"h": -0.5, "z": -3.0}, {"i": -1.0, "z": -3.0}], "text_offset": [0, 1]}},
      {"index": 1, "text": "yw", "finish_reason": "stop",
       "logprobs": {"tokens": ["y", "w"], "token_logprobs": [-0.25, -2.0],
                    "top_logprobs": [{"y": -0.25, "z": -3.0}, {"w": -2.0, "z": -3.0}], "text_offset": [0, 1]}}],
    "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10, "prompt_tokens_details": {"cached_tokens": 4}}})");
  EXPECT_EQ(completion_response(ids(false), 2, deltas(), true, usage_, *tokenizer_), expected);
  // Without logprobs asked for: null.
  const nlohmann::json plain = completion_response(ids(false), 2, deltas(), false, usage_, *tokenizer_);
  EXPECT_TRUE(plain["choices"][0]["logprobs"].is_null());
  EXPECT_EQ(plain["choices"][1]["text"], "yw");
}

// echo (what lm-evaluation-harness's local-completions sends for log-likelihood): the prompt's
// tokens lead the text and the logprobs, the first one unscored (null), offsets running on.
TEST_F(ResponseJson, AnEchoedPromptLeadsTheTextAndTheLogprobs) {
  ChoiceDelta echo;
  echo.prompt = {'a', 'b'};
  echo.prompt_logprobs = {token('b', -0.75f)};
  const std::vector<ChoiceDelta> deltas = {echo, {0, "h", token('h', -0.5f), FinishReason::Length, {}, {}}};
  const nlohmann::json expected = nlohmann::json::parse(R"({
    "id": "cmpl-1", "object": "text_completion", "created": 1700000000, "model": "tiny",
    "choices": [
      {"index": 0, "text": "abh", "finish_reason": "length",
       "logprobs": {"tokens": ["a", "b", "h"], "token_logprobs": [null, -0.75, -0.5],
                    "top_logprobs": [null, {"b": -0.75, "z": -3.0}, {"h": -0.5, "z": -3.0}],
                    "text_offset": [0, 1, 2]}}],
    "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10, "prompt_tokens_details": {"cached_tokens": 4}}})");
  EXPECT_EQ(completion_response(ids(false), 1, deltas, true, usage_, *tokenizer_), expected);
  EXPECT_EQ(completion_response(ids(false), 1, deltas, false, usage_, *tokenizer_)["choices"][0]["text"], "abh");
}

TEST_F(ResponseJson, ChatCompletionHasAnAssistantMessagePerChoice) {
  const nlohmann::json expected = nlohmann::json::parse(R"({
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": "tiny",
    "choices": [
      {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "length", "logprobs": null},
      {"index": 1, "message": {"role": "assistant", "content": "yw"}, "finish_reason": "stop", "logprobs": null}],
    "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10, "prompt_tokens_details": {"cached_tokens": 4}}})");
  EXPECT_EQ(completion_response(ids(true), 2, deltas(), false, usage_, *tokenizer_), expected);
  // With logprobs: one chat-format entry per token, bytes spelled out.
  const nlohmann::json with = completion_response(ids(true), 2, deltas(), true, usage_, *tokenizer_);
  EXPECT_EQ(with["choices"][0]["logprobs"]["content"][1], nlohmann::json::parse(R"({"token": "i", "logprob": -1.0,
      "bytes": [105], "top_logprobs": [{"token": "i", "logprob": -1.0, "bytes": [105]},
                                       {"token": "z", "logprob": -3.0, "bytes": [122]}]})"));
  EXPECT_EQ(with["choices"][1]["logprobs"]["content"].size(), 2u);
}

TEST_F(ResponseJson, StreamChunksCarryOneDeltaEach) {
  const std::vector<ChoiceDelta> d = deltas();
  EXPECT_EQ(*stream_chunk(ids(false), d[2], true, 1, *tokenizer_), nlohmann::json::parse(R"({
    "id": "cmpl-1", "object": "text_completion", "created": 1700000000, "model": "tiny",
    "choices": [{"index": 0, "text": "i", "finish_reason": "length",
                 "logprobs": {"tokens": ["i"], "token_logprobs": [-1.0], "top_logprobs": [{"i": -1.0, "z": -3.0}],
                              "text_offset": [1]}}]})"));
  EXPECT_EQ(*stream_chunk(ids(true), d[0], false, 0, *tokenizer_), nlohmann::json::parse(R"({
    "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000, "model": "tiny",
    "choices": [{"index": 0, "delta": {"content": "h"}, "finish_reason": null, "logprobs": null}]})"));
  // A finish without text: an empty delta; held-back text without logprobs: no chunk at all.
  const nlohmann::json finish =
      *stream_chunk(ids(true), {1, "", std::nullopt, FinishReason::Stop, {}, {}}, false, 2, *tokenizer_);
  EXPECT_EQ(finish["choices"][0]["delta"], nlohmann::json::object());
  EXPECT_EQ(finish["choices"][0]["finish_reason"], "stop");
  EXPECT_FALSE(stream_chunk(ids(true), d[3], false, 1, *tokenizer_).has_value());
  EXPECT_TRUE(stream_chunk(ids(true), d[3], true, 1, *tokenizer_).has_value());  // its logprobs are news
}

TEST_F(ResponseJson, AChatStreamOpensWithTheRoleAndClosesWithUsage) {
  EXPECT_EQ(chat_role_chunk(ids(true), 2), nlohmann::json::parse(R"({
    "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000, "model": "tiny",
    "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null},
                {"index": 1, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]})"));
  EXPECT_EQ(usage_chunk(ids(true), usage_), nlohmann::json::parse(R"({
    "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000, "model": "tiny", "choices": [],
    "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10, "prompt_tokens_details": {"cached_tokens": 4}}})"));
  EXPECT_EQ(usage_chunk(ids(false), usage_)["object"], "text_completion");
}

TEST_F(ResponseJson, ModelsListTheOneModelServed) {
  ApiLimits limits;
  limits.model_id.assign("tiny");
  limits.context = 512;
  const nlohmann::json model = nlohmann::json::parse(
      R"({"id": "tiny", "object": "model", "created": 1700000000, "owned_by": "deepmoe", "max_model_len": 512})");
  EXPECT_EQ(model_object(limits, 1700000000), model);
  EXPECT_EQ(model_list(limits, 1700000000), (nlohmann::json{{"object", "list"}, {"data", {model}}}));
}

}  // namespace
}  // namespace deepmoe
