// deepmoe sft: supervised fine-tuning of a model directory on conversations (train/sft_data.h:
// {"messages"} through the model's chat template, or {"prompt", "completion"}), the loss on the
// assistant's tokens only; every other flag, the checkpoints and the run are train's.
#include <memory>

#include "cli/common.h"
#include "cli/training_run.h"
#include "core/error.h"
#include "train/sft_data.h"

namespace deepmoe::cli {

namespace {

struct SftFiles {
  std::string data, val_data;
};

std::unique_ptr<train::TrainingData> sft_data(const SftFiles& files, const train::TrainerOptions& o) {
  const auto tokenizer = load_model_tokenizer(o.init_dir);
  const std::unique_ptr<ChatTemplate> chat_template = chat_template_of(*tokenizer);
  std::vector<train::SftExample> train = train::load_sft_jsonl(files.data, *tokenizer, chat_template.get());
  std::vector<train::SftExample> validation;
  if (!files.val_data.empty()) validation = train::load_sft_jsonl(files.val_data, *tokenizer, chat_template.get());
  const int32_t pad = tokenizer->eos_id().value_or(0);
  auto data = std::make_unique<train::SftData>(std::move(train), std::move(validation), o.seq, o.batch, pad, o.seed);
  const train::SftStats& s = data->stats();
  if (is_first_rank())
    fmt::print("sft: {} examples, {} tokens ({} trained: the assistant's), {:.1f} % of the rows padding{}\n",
               s.examples, s.tokens, s.trained, 100.0 * s.padding,
               s.cut ? fmt::format("; {} longer than --seq {} were cut", s.cut, o.seq) : "");
  return data;
}

}  // namespace

void add_sft_command(CLI::App& app) {
  auto flags = std::make_shared<TrainFlags>();
  auto files = std::make_shared<SftFiles>();
  auto* command =
      app.add_subcommand("sft", "Supervised fine-tuning on conversations (JSONL), the loss on the assistant's tokens");
  command->add_option("--init", flags->trainer.init_dir, "the model directory to fine-tune (with its tokenizer)")
      ->required();
  command
      ->add_option("--data", files->data,
                   "JSONL: {\"messages\": [{\"role\", \"content\"}, ...]} (the model's chat template) or "
                   "{\"prompt\", \"completion\"} (plain text) per line")
      ->required();
  command->add_option("--val-data", files->val_data, "held-out conversations, the same format");
  add_common_training_flags(command, *flags);
  command->callback([flags, files] {
    run_training(*flags, [files](const train::TrainerOptions& o) { return sft_data(*files, o); });
  });
}

}  // namespace deepmoe::cli
