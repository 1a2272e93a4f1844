#include <chrono>
#include <cstdio>

#include "cli/common.h"
#include "core/error.h"
#include "tokenizer/bpe_trainer.h"

namespace deepmoe::cli {

void add_tokenizer_train_command(CLI::App& app) {
  struct Options {
    std::vector<std::string> files;
    std::string out;
    BpeTrainingOptions training;
  };
  auto options = std::make_shared<Options>();
  auto* command =
      app.add_subcommand("tokenizer-train", "Train a byte-level BPE (DeepSeek's pre-tokenizer) on text files");
  command->add_option("files", options->files, "UTF-8 text files")->required();
  command->add_option("--vocab-size", options->training.vocab_size, "tokens in all: specials + 256 bytes + merges")
      ->required();
  command->add_option("--min-frequency", options->training.min_frequency, "never merge pairs seen fewer times");
  command->add_option("--out", options->out, "output directory (tokenizer.json, tokenizer_config.json)")->required();
  command->callback([options] {
    if (options->training.min_frequency < 1) fail("--min-frequency must be >= 1");
    const auto start = std::chrono::steady_clock::now();
    const TrainedBpe trained = train_bpe(options->files, options->training, [](int64_t done, int64_t wanted) {
      fmt::print(stderr, "\rmerges {}/{}", done, wanted);
    });
    write_trained_tokenizer(trained, options->training, options->out);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    fmt::print(stderr, "\n{} words ({} distinct), {} merges, vocabulary {}, {:.1f} s -> {}\n", trained.words,
               trained.distinct_words, trained.merges.size(), trained.tokens.size(), seconds, options->out);
  });
}

}  // namespace deepmoe::cli
