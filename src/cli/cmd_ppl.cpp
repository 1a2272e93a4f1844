// deepmoe ppl: perplexity of a model on a token file (how quantization is judged): the mean
// next-token cross-entropy over consecutive windows of T + 1 tokens, window k starting at k·T
// (the windows training's sequential order and validation read), exponentiated.
#include <algorithm>
#include <cmath>

#include "cli/common.h"
#include "core/error.h"
#include "io/token_windows.h"
#include "kernels/ops.h"
#include "model/model.h"

namespace deepmoe::cli {

void add_ppl_command(CLI::App& app) {
  struct Options {
    LoadOptions load;
    std::string model, data, compare;
    int64_t seq = 512, max_windows = 0;
    int threads = 0;
    bool json = false;
  };
  auto o = std::make_shared<Options>();
  auto* command = app.add_subcommand("ppl", "Perplexity of a model on a uint32 token file");
  command->add_option("--model", o->model, "HuggingFace model directory")->required();
  add_load_options(command, o->load);
  command->add_option("--data", o->data, "tokens (uint32 file, deepmoe prepare's output)")->required();
  command->add_option("--seq", o->seq, "tokens per window (each predicts its next token)");
  command->add_option("--max-windows", o->max_windows, "score only the first N windows (0: all)");
  command->add_option("--compare", o->compare,
                      "also run this model (e.g. the f32 original) and report how often the top-1 tokens agree");
  command->add_option("--threads", o->threads, "threads (0: all cores)");
  command->add_flag("--json", o->json, "one JSON line instead of text");
  command->callback([o] {
    if (o->seq < 1) fail("--seq must be >= 1");
    const TokenWindows data(o->data, o->seq, WindowOrder::Sequential, 0);
    const auto weights = load_model(o->model, o->load);
    const Config& c = weights->config;
    if (o->seq > c.max_position_embeddings)
      fail("--seq {} is longer than the model's max_position_embeddings {}", o->seq, c.max_position_embeddings);
    int64_t windows = (data.tokens() - 1) / o->seq;
    if (o->max_windows > 0) windows = std::min(windows, o->max_windows);
    Model model(*weights, resolve_threads(o->threads));
    std::unique_ptr<ModelWeights> other_weights;
    std::unique_ptr<Model> other;
    if (!o->compare.empty()) {
      other_weights = load_model(o->compare, o->load);
      if (other_weights->config.vocab_size != c.vocab_size)
        fail("--compare {}: vocabulary {} differs from {}", o->compare, other_weights->config.vocab_size, c.vocab_size);
      other = std::make_unique<Model>(*other_weights, resolve_threads(o->threads));
    }
    std::vector<int32_t> inputs, targets;
    std::vector<float> logits(size_t(o->seq * c.vocab_size)), other_logits;
    LatentCache cache(c, o->seq);
    std::unique_ptr<LatentCache> other_cache;
    if (other) {
      other_logits.resize(logits.size());
      other_cache = std::make_unique<LatentCache>(other_weights->config, o->seq);
    }
    double total = 0;
    int64_t agree = 0;
    for (int64_t k = 0; k < windows; ++k) {
      data.batch(k, 1, inputs, targets);
      cache.length = 0;  // each window is a sequence of its own
      model.forward(inputs, cache, LogitsFor::AllTokens, logits.data());
      if (other) {
        other_cache->length = 0;
        other->forward(inputs, *other_cache, LogitsFor::AllTokens, other_logits.data());
        for (int64_t t = 0; t < o->seq; ++t) {
          const auto row = logits.begin() + t * c.vocab_size, other_row = other_logits.begin() + t * c.vocab_size;
          agree += std::max_element(row, row + c.vocab_size) - row ==
                   std::max_element(other_row, other_row + c.vocab_size) - other_row;
        }
      }
      for (int64_t t = 0; t < o->seq; ++t) {
        const float* row = logits.data() + t * c.vocab_size;
        total += log_sum_exp(row, c.vocab_size) - double(row[targets[size_t(t)]]);
      }
    }
    const int64_t n = windows * o->seq;
    const double mean = total / double(n);
    const double agreement = double(agree) / double(n);
    if (o->json) {
      const std::string compared = other ? fmt::format(", \"top1_agreement\": {:.6f}", agreement) : "";
      fmt::print(
          "{{\"perplexity\": {:.6f}, \"cross_entropy\": {:.8f}, \"tokens\": {}, \"windows\": {}, \"seq\": {}{}}}\n",
          std::exp(mean), mean, n, windows, o->seq, compared);
    } else {
      fmt::print("perplexity {:.4f} (mean cross-entropy {:.6f} over {} tokens in {} windows of {})\n", std::exp(mean),
                 mean, n, windows, o->seq);
      if (other) fmt::print("top-1 agreement with {}: {:.2f}%\n", o->compare, 100.0 * agreement);
    }
  });
}

}  // namespace deepmoe::cli
