// Direct preference optimization's data (deepmoe dpo): one pair per JSON line, TRL's formats:
//   {"prompt": str, "chosen": str, "rejected": str}: plain text (the prompt with BOS, each reply
//     with EOS appended);
//   {"prompt" or "messages": [messages], "chosen": str, "rejected": str}: the conversation, then
//     each reply as the assistant's turn, through the model's chat template.
// A pair is two rows (chosen, rejected) of `seq` tokens whose reply tokens are scored: log π(y) is
// the sum of their log-probabilities. The loss, Rafailov et al.'s:
//   L = -log σ(β [(log πθ(y_w) - log π_ref(y_w)) - (log πθ(y_l) - log π_ref(y_l))]),
// averaged over the step's pairs, with π_ref the frozen reference model's sums (reference_sums).
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "kernels/context.h"
#include "train/sft_data.h"

namespace deepmoe::train {

struct PreferencePair {
  SftExample chosen, rejected;  // `trained`: the reply's tokens
};

// Throws Error naming file:line for a malformed pair, one whose chosen and rejected replies are
// equal, or a conversation the template cannot mark.
std::vector<PreferencePair> load_preference_jsonl(const std::string& path, const Tokenizer& tokenizer,
                                                  const ChatTemplate* chat_template);

// The sums log π(reply) = Σ weight × log p(target) of a micro-batch's rows under some model.
using RowScorer = std::function<std::vector<double>(const MicroBatch& rows, const std::vector<double>& weights)>;

// A scorer over the model in `model_dir` (loaded here, freed with the scorer), its GEMMs in
// `precision` as training's.
RowScorer model_scorer(const std::string& model_dir, int threads, GemmPrecision precision, int64_t seq);

class DpoData : public TrainingData {
 public:
  // Examples (pairs) drawn epoch by epoch as SftData draws them; `validation` may be empty.
  DpoData(std::vector<PreferencePair> train, std::vector<PreferencePair> validation, int64_t seq, int64_t batch,
          int32_t pad, uint64_t seed, double beta);
  // The reference model's sums of every pair's rows, training then validation, `batch` pairs at a
  // time (computed once, before training: the reference never changes).
  void compute_reference(const RowScorer& reference);
  // Or restored from an earlier run's (reference_values()).
  void set_reference(std::vector<double> values);
  const std::vector<double>& reference_values() const { return reference_; }
  size_t pairs() const { return train_.size() + validation_.size(); }

  MicroBatch train_batch(int64_t first, int64_t count, int64_t step_examples) override;
  int64_t validation_batches() const override;
  MicroBatch validation_batch(int64_t index) override;
  bool loss_is_cross_entropy() const override { return false; }
  int64_t rows_per_example() const override { return 2; }
  // The rows of pairs [first, first + count) of the training (or, past it, validation) pairs, with
  // their reply masks (for reference scoring and tests).
  MicroBatch rows(const std::vector<size_t>& pairs, std::vector<double>& weights) const;

 private:
  MicroBatch batch_of(const std::vector<size_t>& pairs, double pairs_in_step);

  std::vector<PreferencePair> train_, validation_;
  int64_t seq_, batch_;
  int32_t pad_;
  double beta_;
  std::vector<double> reference_;  // per pair (training, then validation): chosen, rejected
  EpochOrder order_;
};

}  // namespace deepmoe::train
