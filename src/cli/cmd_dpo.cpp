// deepmoe dpo: direct preference optimization of a model directory on preference pairs
// (train/dpo_data.h), against a frozen reference model (--reference, default the starting model)
// whose log-probabilities are computed once before training and cached in OUT for --resume; every
// other flag, the checkpoints and the run are train's.
#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>

#include "cli/common.h"
#include "cli/training_run.h"
#include "core/error.h"
#include "io/mapped_file.h"
#include "kernels/gemm_bf16.h"
#include "train/dpo_data.h"

namespace deepmoe::cli {

namespace {

struct DpoFlags {
  std::string data, val_data, reference;
  double beta = 0.1;
};

// OUT/dpo_reference.json when it was made from the same reference for as many pairs: the values.
std::optional<std::vector<double>> cached_reference(const std::string& path, const std::string& reference,
                                                    size_t pairs) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  const auto j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded() || j.value("reference", "") != reference || j.value("pairs", size_t(0)) != pairs ||
      !j.contains("values") || !j["values"].is_array() || j["values"].size() != 2 * pairs)
    return std::nullopt;
  return j["values"].get<std::vector<double>>();
}

std::unique_ptr<train::TrainingData> dpo_data(const DpoFlags& flags, const train::TrainerOptions& o) {
  const auto tokenizer = load_model_tokenizer(o.init_dir);
  const std::unique_ptr<ChatTemplate> chat_template = chat_template_of(*tokenizer);
  auto train = train::load_preference_jsonl(flags.data, *tokenizer, chat_template.get());
  std::vector<train::PreferencePair> validation;
  if (!flags.val_data.empty())
    validation = train::load_preference_jsonl(flags.val_data, *tokenizer, chat_template.get());
  auto data = std::make_unique<train::DpoData>(std::move(train), std::move(validation), o.seq, o.batch,
                                               tokenizer->eos_id().value_or(0), o.seed, flags.beta);
  const std::string reference = reference_model_dir(flags.reference, o.init_dir);
  const std::string cache = (std::filesystem::path(o.out_dir) / "dpo_reference.json").string();
  if (auto values = cached_reference(cache, reference, data->pairs())) {
    data->set_reference(std::move(*values));
    if (is_first_rank()) fmt::print("dpo: {} pairs; the reference's log-probabilities from {}\n", data->pairs(), cache);
    return data;
  }
  const auto start = std::chrono::steady_clock::now();
  const GemmPrecision precision =
      o.precision == GemmPrecision::BF16 && cpu_has_bf16_gemm() ? GemmPrecision::BF16 : GemmPrecision::F32;
  data->compute_reference(train::model_scorer(reference, o.threads, precision, o.seq));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (is_first_rank()) {
    std::filesystem::create_directories(o.out_dir);
    const std::string text =
        nlohmann::json{{"reference", reference}, {"pairs", data->pairs()}, {"values", data->reference_values()}}.dump();
    write_file_atomically(cache, {reinterpret_cast<const uint8_t*>(text.data()), text.size()});
    fmt::print("dpo: {} pairs; the reference ({}) scored them in {:.1f} s, cached in {}\n", data->pairs(), reference,
               seconds, cache);
  }
  return data;
}

}  // namespace

void add_dpo_command(CLI::App& app) {
  auto flags = std::make_shared<TrainFlags>();
  auto dpo = std::make_shared<DpoFlags>();
  auto* command = app.add_subcommand("dpo", "Direct preference optimization on pairs of replies (JSONL)");
  command->add_option("--init", flags->trainer.init_dir, "the model directory to train (with its tokenizer)")
      ->required();
  command
      ->add_option("--data", dpo->data,
                   "JSONL: {\"prompt\": text or [messages], \"chosen\": reply, \"rejected\": reply} per line "
                   "(or \"messages\" for the prompt)")
      ->required();
  command->add_option("--val-data", dpo->val_data, "held-out pairs, the same format");
  command->add_option("--reference", dpo->reference, "the frozen reference model (default: --init)");
  command->add_option("--beta", dpo->beta, "β: how far from the reference the policy may move (default 0.1)");
  add_common_training_flags(command, *flags);
  command->callback(
      [flags, dpo] { run_training(*flags, [dpo](const train::TrainerOptions& o) { return dpo_data(*dpo, o); }); });
}

}  // namespace deepmoe::cli
