// SFT's data: the assistant turns of a conversation found through the chat template (the tokens
// of each turn, and only those, trained), written out by hand on a byte-level tokenizer with a
// DeepSeek-shaped template; templates that cannot mark the turns and conversations without one
// are errors; rows, padding and the masked mean over the whole step.
#include "train/sft_data.h"

#include <gtest/gtest.h>

#include <numeric>
#include <set>

#include "core/error.h"
#include "tokenizer/byte_level.h"

namespace deepmoe::train {
namespace {

constexpr int32_t kBos = 256, kEos = 257, kUser = 258, kAssistant = 259;

const char* kTemplate =
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}"
    "{% elif m['role'] == 'user' %}{{ '<|User|>' + m['content'] }}"
    "{% else %}{{ '<|Assistant|>' + m['content'] + eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|Assistant|>' }}{% endif %}";

// Byte-level BPE whose ids 0..255 are the bytes, plus four special tokens.
std::unique_ptr<Tokenizer> tokenizer() {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_level::char_for_byte(uint8_t(b))] = b;
  nlohmann::json added = nlohmann::json::array();
  for (auto [id, text] :
       {std::pair{kBos, "<bos>"}, {kEos, "<eos>"}, {kUser, "<|User|>"}, {kAssistant, "<|Assistant|>"}})
    added.push_back({{"id", id}, {"content", text}, {"special", true}});
  const nlohmann::json j = {
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"added_tokens", added}};
  const nlohmann::json config = {{"bos_token", "<bos>"}, {"eos_token", "<eos>"}, {"chat_template", kTemplate}};
  return Tokenizer::from_json(j.dump(), config.dump(), "bytes");
}

std::vector<int32_t> bytes(const std::string& text) { return {text.begin(), text.end()}; }

std::vector<int32_t> join(std::initializer_list<std::vector<int32_t>> parts) {
  std::vector<int32_t> all;
  for (const auto& p : parts) all.insert(all.end(), p.begin(), p.end());
  return all;
}

TEST(SftData, OnlyTheAssistantTurnsAreTrained) {
  const auto t = tokenizer();
  const ChatTemplate chat(t->chat_template());
  const auto messages = nlohmann::json::parse(R"([{"role": "system", "content": "be brief"},
      {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
      {"role": "user", "content": "and?"}, {"role": "assistant", "content": "ok"}])");
  const SftExample e = encode_conversation(*t, chat, messages);
  EXPECT_EQ(e.tokens, join({{kBos},
                            bytes("be brief"),
                            {kUser},
                            bytes("hi"),
                            {kAssistant},
                            bytes("yo"),
                            {kEos},
                            {kUser},
                            bytes("and?"),
                            {kAssistant},
                            bytes("ok"),
                            {kEos}}));
  // Trained: "yo<eos>" and "ok<eos>"; the "<|Assistant|>" before them is the prompt's.
  std::vector<uint8_t> expected(e.tokens.size(), 0);
  for (size_t i : {size_t(13), size_t(14), size_t(15), size_t(22), size_t(23), size_t(24)}) expected[i] = 1;
  EXPECT_EQ(e.trained, expected);
}

TEST(SftData, ConversationsTheTemplateCannotMarkAreErrors) {
  const auto t = tokenizer();
  const ChatTemplate chat(t->chat_template());
  try {
    encode_conversation(*t, chat, nlohmann::json::parse(R"([{"role": "user", "content": "hi"}])"));
    FAIL() << "no assistant turn";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no assistant turn"), std::string::npos) << e.what();
  }
  // A template that renders only the last message: the renderings are not prefixes of each other.
  const ChatTemplate last("{{ messages[-1]['content'] }}{% if add_generation_prompt %}>{% endif %}");
  try {
    encode_conversation(*t, last, nlohmann::json::parse(R"([{"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"}])"));
    FAIL() << "a template without the prefix property";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot mark"), std::string::npos) << e.what();
  }
}

TEST(SftData, ACompletionIsTrainedWithItsEos) {
  const auto t = tokenizer();
  const SftExample e = encode_completion(*t, "2+2=", " 4");
  EXPECT_EQ(e.tokens, join({bytes("2+2="), bytes(" 4"), {kEos}}));
  EXPECT_EQ(e.trained, (std::vector<uint8_t>{0, 0, 0, 0, 1, 1, 1}));
}

// Rows padded with the pad id (weight 0), and the objective the mean over the whole step's trained
// tokens: two micro-batches of one example each add up to the step's mean. "ab|c<eos>" trains
// targets 1, 2 of its row; "a|bcd<eos>" targets 0..3: 6 in the step.
TEST(SftData, MicroBatchesAddUpToTheStepsMaskedMean) {
  const auto t = tokenizer();
  std::vector<SftExample> examples = {encode_completion(*t, "ab", "c"), encode_completion(*t, "a", "bcd")};
  SftData data(examples, {}, 6, 1, kEos, 7);
  EXPECT_EQ(data.stats().trained, 6);
  double total_loss = 0;
  for (int64_t k = 0; k < 2; ++k) {
    const MicroBatch m = data.train_batch(k, 1, 2);
    ASSERT_EQ(m.rows, 1);
    ASSERT_EQ(m.inputs.size(), 6u);
    std::vector<double> logprobs(6), gradient(6);
    std::iota(logprobs.begin(), logprobs.end(), -6.0);  // -6 .. -1
    total_loss += m.objective(logprobs, gradient) * m.weight;
    const bool first = m.inputs[1] == 'b' && m.inputs[2] == 'c' && m.inputs[3] == kEos;
    const std::vector<double> trained =
        first ? std::vector<double>{0, 1, 1, 0, 0, 0} : std::vector<double>{1, 1, 1, 1, 0, 0};
    for (size_t r = 0; r < 6; ++r) EXPECT_DOUBLE_EQ(gradient[r], -trained[r] / 6.0) << "row " << r;
    EXPECT_EQ(m.trained_tokens, first ? 2 : 4);
    EXPECT_EQ(m.targets[first ? 2 : 3], kEos);  // the completion's EOS is a trained target
  }
  // (5 + 4) / 6 + (6 + 5 + 4 + 3) / 6, in whichever order the epoch drew them.
  EXPECT_DOUBLE_EQ(total_loss, 27.0 / 6.0);
}

TEST(SftData, EachEpochIsAPermutationOfTheExamples) {
  const auto t = tokenizer();
  std::vector<SftExample> examples;
  for (int i = 0; i < 5; ++i) examples.push_back(encode_completion(*t, std::string(size_t(i + 1), 'a'), "b"));
  SftData data(examples, {}, 8, 5, kEos, 3);
  for (int64_t epoch = 0; epoch < 3; ++epoch) {
    std::set<size_t> lengths;
    for (int64_t k = 0; k < 5; ++k) {
      const MicroBatch m = data.train_batch(epoch * 5 + k, 1, 5);
      lengths.insert(size_t(std::count(m.inputs.begin(), m.inputs.end(), int32_t('a'))));
    }
    EXPECT_EQ(lengths, (std::set<size_t>{1, 2, 3, 4, 5})) << "epoch " << epoch;
  }
}

}  // namespace
}  // namespace deepmoe::train
