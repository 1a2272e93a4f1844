// Trains a byte-level BPE the way HF's BpeTrainer does (count pre-tokenized words, repeatedly
// merge the most frequent adjacent pair) and writes an HF tokenizer directory that HF's loaders
// and ours read identically. The pre-tokenizer is DeepSeek-V3's, so trained vocabularies split
// text the way DeepSeek models expect.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace deepmoe {

struct BpeTrainingOptions {
  int64_t vocab_size = 4096;  // including the 256 byte symbols and the special tokens
  int64_t min_frequency = 2;  // pairs seen fewer times are never merged
  std::vector<std::string> special_tokens = {"<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>",
                                             "<｜User｜>", "<｜Assistant｜>"};
};

struct TrainedBpe {
  std::vector<std::string> tokens;  // byte-level strings by id (specials first, then bytes, then merges)
  std::vector<std::pair<std::string, std::string>> merges;
  int64_t words = 0, distinct_words = 0;
};

// The pre-tokenizer JSON of DeepSeek-V3's tokenizer (digit runs of 1-3, CJK runs, then the word regex).
const char* deepseek_v3_pre_tokenizer_json();

// Trains on the UTF-8 text of `files` (invalid bytes repaired to U+FFFD). `progress` is called
// now and then with (merges done, merges wanted).
TrainedBpe train_bpe(const std::vector<std::string>& files, const BpeTrainingOptions& options,
                     const std::function<void(int64_t, int64_t)>& progress = {});

// Writes DIR/tokenizer.json and DIR/tokenizer_config.json (BOS added on encode, a DeepSeek-style
// chat template). Files are written to a temporary name and renamed.
void write_trained_tokenizer(const TrainedBpe& trained, const BpeTrainingOptions& options, const std::string& dir);

}  // namespace deepmoe
