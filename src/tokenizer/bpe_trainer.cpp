#include "tokenizer/bpe_trainer.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <queue>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include "core/error.h"
#include "io/mapped_file.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/utf8.h"

namespace deepmoe {

using nlohmann::json;

const char* deepseek_v3_pre_tokenizer_json() {
  return R"JSON({"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": "\\p{N}{1,3}"}, "behavior": "Isolated", "invert": false},
    {"type": "Split", "pattern": {"Regex": "[一-龥぀-ゟ゠-ヿ]+"}, "behavior": "Isolated", "invert": false},
    {"type": "Split", "pattern": {"Regex": "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"}, "behavior": "Isolated", "invert": false},
    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]})JSON";
}

namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open for reading", path);
  std::ostringstream text;
  text << in.rdbuf();
  return std::move(text).str();
}

uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }

struct Word {
  std::vector<int32_t> symbols;
  int64_t count;
};

}  // namespace

TrainedBpe train_bpe(const std::vector<std::string>& files, const BpeTrainingOptions& options,
                     const std::function<void(int64_t, int64_t)>& progress) {
  const int64_t n_special = int64_t(options.special_tokens.size());
  if (options.vocab_size < 256 + n_special)
    fail("--vocab-size {} is too small: the 256 byte symbols and {} special tokens need {}", options.vocab_size,
         n_special, 256 + n_special);
  if (files.empty()) fail("no training files given");

  // 1. Count words as the pre-tokenizer splits them.
  const PreTokenizer pre_tokenizer(json::parse(deepseek_v3_pre_tokenizer_json()));
  std::unordered_map<std::string, int64_t> word_counts;
  TrainedBpe trained;
  std::vector<Piece> pieces;
  for (const auto& file : files) {
    std::string text = read_file(file);
    if (!utf8::is_valid(text)) text = utf8::sanitize(text);
    pre_tokenizer.split(text, pieces);
    for (const Piece& p : pieces) ++word_counts[text.substr(p.begin, p.end - p.begin)];
    trained.words += int64_t(pieces.size());
  }
  trained.distinct_words = int64_t(word_counts.size());

  // 2. Vocabulary so far: special tokens, then the 256 byte symbols (id = n_special + byte).
  for (const auto& s : options.special_tokens) trained.tokens.push_back(s);
  for (int b = 0; b < 256; ++b) trained.tokens.push_back(byte_level::char_for_byte(uint8_t(b)));
  std::vector<Word> words;
  words.reserve(word_counts.size());
  for (const auto& [bytes, count] : word_counts) {
    Word w{{}, count};
    for (const char c : bytes) w.symbols.push_back(int32_t(n_special + static_cast<unsigned char>(c)));
    words.push_back(std::move(w));
  }
  // Deterministic regardless of hash order.
  std::sort(words.begin(), words.end(), [](const Word& a, const Word& b) { return a.symbols < b.symbols; });

  // 3. Pair counts and where each pair occurs.
  std::unordered_map<uint64_t, int64_t> pair_counts;
  std::unordered_map<uint64_t, std::unordered_set<uint32_t>> pair_words;
  for (uint32_t w = 0; w < words.size(); ++w) {
    const auto& s = words[w].symbols;
    for (size_t i = 0; i + 1 < s.size(); ++i) {
      const uint64_t key = pair_key(s[i], s[i + 1]);
      pair_counts[key] += words[w].count;
      pair_words[key].insert(w);
    }
  }
  // Most frequent first; ties go to the pair whose merged token sorts first, then to the older ids.
  struct Candidate {
    int64_t count;
    uint64_t key;
  };
  const auto worse = [&](const Candidate& a, const Candidate& b) {
    if (a.count != b.count) return a.count < b.count;
    return a.key > b.key;
  };
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(worse)> queue(worse);
  for (const auto& [key, count] : pair_counts) queue.push({count, key});

  const int64_t wanted = options.vocab_size - int64_t(trained.tokens.size());
  std::unordered_map<std::string, int32_t> token_ids;
  for (size_t i = 0; i < trained.tokens.size(); ++i) token_ids.emplace(trained.tokens[i], int32_t(i));
  while (int64_t(trained.merges.size()) < wanted && !queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    const auto current = pair_counts.find(top.key);
    if (current == pair_counts.end() || current->second != top.count) continue;  // stale entry
    if (top.count < options.min_frequency) break;
    const int32_t left = int32_t(top.key >> 32), right = int32_t(top.key & 0xFFFFFFFF);
    const std::string merged = trained.tokens[size_t(left)] + trained.tokens[size_t(right)];
    // Two different pairs can spell the same token; it keeps its first id.
    int32_t merged_id;
    if (const auto it = token_ids.find(merged); it != token_ids.end()) {
      merged_id = it->second;
    } else {
      merged_id = int32_t(trained.tokens.size());
      trained.tokens.push_back(merged);
      token_ids.emplace(merged, merged_id);
    }
    trained.merges.emplace_back(trained.tokens[size_t(left)], trained.tokens[size_t(right)]);

    // Merge in every word holding the pair, updating the counts of the pairs around it.
    std::vector<uint32_t> holders(pair_words[top.key].begin(), pair_words[top.key].end());
    std::sort(holders.begin(), holders.end());
    std::unordered_map<uint64_t, int64_t> changed;
    for (const uint32_t w : holders) {
      auto& s = words[w].symbols;
      const int64_t count = words[w].count;
      for (size_t i = 0; i + 1 < s.size(); ++i) {
        const uint64_t key = pair_key(s[i], s[i + 1]);
        pair_counts[key] -= count;
        changed[key];
      }
      std::vector<int32_t> next;
      next.reserve(s.size());
      for (size_t i = 0; i < s.size(); ++i) {
        if (i + 1 < s.size() && s[i] == left && s[i + 1] == right) {
          next.push_back(merged_id);
          ++i;
        } else {
          next.push_back(s[i]);
        }
      }
      s = std::move(next);
      for (size_t i = 0; i + 1 < s.size(); ++i) {
        const uint64_t key = pair_key(s[i], s[i + 1]);
        pair_counts[key] += count;
        pair_words[key].insert(w);
        changed[key];
      }
    }
    for (const auto& [key, _] : changed) {
      const int64_t count = pair_counts[key];
      if (count > 0) {
        queue.push({count, key});
      } else {
        pair_counts.erase(key);
        pair_words.erase(key);
      }
    }
    if (progress && trained.merges.size() % 256 == 0) progress(int64_t(trained.merges.size()), wanted);
  }
  if (progress) progress(int64_t(trained.merges.size()), wanted);
  return trained;
}

namespace {

void write_atomically(const std::filesystem::path& path, const std::string& text) {
  write_file_atomically(path.string(), {reinterpret_cast<const uint8_t*>(text.data()), text.size()});
}

// A DeepSeek-V3-style chat template of our own: system text first, then User/Assistant turns.
constexpr const char* kChatTemplate =
    "{{ bos_token }}"
    "{%- for message in messages if message['role'] == 'system' %}{{ message['content'] }}{% endfor -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
    "{%- elif message['role'] == 'assistant' %}{{ '<｜Assistant｜>' + message['content'] + eos_token }}"
    "{%- elif message['role'] != 'system' %}{{ raise_exception('unsupported role: ' + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}";

}  // namespace

void write_trained_tokenizer(const TrainedBpe& trained, const BpeTrainingOptions& options, const std::string& dir) {
  std::filesystem::create_directories(dir);
  json vocab = json::object();
  for (size_t i = 0; i < trained.tokens.size(); ++i) vocab[trained.tokens[i]] = i;
  json merges = json::array();
  for (const auto& [l, r] : trained.merges) merges.push_back(l + " " + r);
  json added = json::array();
  for (size_t i = 0; i < options.special_tokens.size(); ++i)
    added.push_back({{"id", i},
                     {"content", options.special_tokens[i]},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  const json byte_level = {
      {"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}};
  json tokenizer = {{"version", "1.0"},
                    {"truncation", nullptr},
                    {"padding", nullptr},
                    {"added_tokens", added},
                    {"normalizer", nullptr},
                    {"pre_tokenizer", json::parse(deepseek_v3_pre_tokenizer_json())},
                    {"post_processor", byte_level},
                    {"decoder", byte_level},
                    {"model",
                     {{"type", "BPE"},
                      {"dropout", nullptr},
                      {"unk_token", nullptr},
                      {"continuing_subword_prefix", nullptr},
                      {"end_of_word_suffix", nullptr},
                      {"fuse_unk", false},
                      {"byte_fallback", false},
                      {"ignore_merges", false},
                      {"vocab", vocab},
                      {"merges", merges}}}};
  const std::string bos = options.special_tokens.size() > 0 ? options.special_tokens[0] : "";
  const std::string eos = options.special_tokens.size() > 1 ? options.special_tokens[1] : "";
  const json config = {{"add_bos_token", !bos.empty()},
                       {"add_eos_token", false},
                       {"bos_token", bos},
                       {"eos_token", eos},
                       {"pad_token", eos},
                       {"clean_up_tokenization_spaces", false},
                       {"model_max_length", 131072},
                       {"tokenizer_class", "PreTrainedTokenizerFast"},
                       {"chat_template", kChatTemplate}};
  write_atomically(std::filesystem::path(dir) / "tokenizer.json", tokenizer.dump(1));
  write_atomically(std::filesystem::path(dir) / "tokenizer_config.json", config.dump(2));
}

}  // namespace deepmoe
