// Supervised fine-tuning data (deepmoe sft), in TRL's two formats, one JSON object per line:
//   {"messages": [{"role": ..., "content": ...}, ...]}: rendered with the model's chat template;
//     the loss falls on the assistant turns only, found by rendering the conversation up to each
//     assistant turn (with the generation prompt) and up to its end: the text between is the turn.
//     A template whose renderings are not prefixes of one another cannot mark the turns: an error.
//   {"prompt": str, "completion": str}: plain text, the loss on the completion and the EOS token
//     appended to it (TRL's completion-only loss).
// Each example is one row of `seq` tokens, padded with EOS (not trained) or cut at seq + 1 tokens;
// the loss is the mean over the step's trained tokens, so accumulation and ranks give the step's
// mean exactly.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"
#include "train/training_data.h"

namespace deepmoe::train {

struct SftExample {
  std::vector<int32_t> tokens;
  std::vector<uint8_t> trained;  // per token: the loss trains on predicting it (the first never)
};

// One {"messages": [...]} conversation; last_turn_only trains only its last assistant turn (a
// preference pair's reply). Throws Error when it has no assistant turn or the template cannot mark
// the turns (its renderings are not prefixes of one another, or a turn does not start and end on
// a token boundary).
SftExample encode_conversation(const Tokenizer& tokenizer, const ChatTemplate& chat_template,
                               const nlohmann::json& messages, bool last_turn_only = false);
// prompt then completion as plain text, BOS first (when the tokenizer adds one) and EOS last.
SftExample encode_completion(const Tokenizer& tokenizer, const std::string& prompt, const std::string& completion);

// Every line of an SFT JSONL, errors naming file:line. `chat_template` may be null (then only the
// prompt/completion form is accepted).
std::vector<SftExample> load_sft_jsonl(const std::string& path, const Tokenizer& tokenizer,
                                       const ChatTemplate* chat_template);

// An example as a row of `seq` positions: inputs, targets and each target's weight (1 trained, 0
// not), padded with `pad` or cut.
void lay_out_row(const SftExample& example, int64_t seq, int32_t pad, int32_t* inputs, int32_t* targets,
                 double* weights);

// The k-th draw of a stream that goes over n items epoch by epoch, each epoch its own permutation
// from (seed, epoch) alone, so a resumed run draws the same.
class EpochOrder {
 public:
  EpochOrder(size_t n, uint64_t seed) : n_(n), seed_(seed) {}
  size_t operator()(int64_t k);

 private:
  size_t n_;
  uint64_t seed_;
  int64_t epoch_ = -1;
  std::vector<size_t> order_;
};

struct SftStats {
  int64_t examples = 0, cut = 0;    // conversations, and those longer than a row
  int64_t tokens = 0, trained = 0;  // in the rows (after cuts), and those the loss trains on
  double padding = 0;               // share of the rows' positions that are padding
};

class SftData : public TrainingData {
 public:
  // Examples are drawn epoch by epoch, each epoch a permutation from (seed, epoch). Throws Error
  // when no example has a trained token within its row.
  SftData(std::vector<SftExample> train, std::vector<SftExample> validation, int64_t seq, int64_t batch, int32_t pad,
          uint64_t seed);
  MicroBatch train_batch(int64_t first, int64_t count, int64_t step_examples) override;
  int64_t validation_batches() const override;
  MicroBatch validation_batch(int64_t index) override;
  const SftStats& stats() const { return stats_; }

 private:
  const SftExample& example(int64_t k);  // k-th of the stream
  // Rows of `examples` with their per-target weights (1 trained, 0 not).
  MicroBatch rows_of(const std::vector<const SftExample*>& examples, std::vector<double>& weights) const;

  std::vector<SftExample> train_, validation_;
  int64_t seq_, batch_;
  int32_t pad_;
  EpochOrder order_;
  double validation_trained_ = 0;
  SftStats stats_;
};

}  // namespace deepmoe::train
