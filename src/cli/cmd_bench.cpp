#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <random>

#include "cli/common.h"
#include "core/error.h"
#include "infer/generator.h"
#include "kernels/matmul.h"

namespace deepmoe::cli {

namespace {

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

}  // namespace

void add_bench_command(CLI::App& app) {
  struct Options {
    LoadOptions load;
    std::string model;
    int threads = 0;
    int64_t prompt = 64, gen = 32, reps = 3;
    bool json = false;
  };
  auto options = std::make_shared<Options>();
  auto* command = app.add_subcommand("bench", "Measure prefill and decode speed on random prompt tokens");
  command->add_option("--model", options->model, "HuggingFace model directory")->required();
  add_load_options(command, options->load);
  command->add_option("--threads", options->threads, "threads (0: all cores)");
  command->add_option("--prompt", options->prompt, "prompt tokens");
  command->add_option("--gen", options->gen, "generated tokens");
  command->add_option("--reps", options->reps, "repetitions (the median is reported)");
  command->add_flag("--json", options->json, "print one JSON object");
  command->callback([options] {
    if (options->prompt < 1 || options->gen < 2 || options->reps < 1)
      fail("bench: need --prompt >= 1, --gen >= 2, --reps >= 1");
    const auto load_start = std::chrono::steady_clock::now();
    const auto weights = load_model(options->model, options->load);
    const double load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
    const int threads = resolve_threads(options->threads);
    warn_if_gemm_is_held_back();
    Model model(*weights, threads);
    std::mt19937 rng(1234);
    std::vector<int32_t> prompt(size_t(options->prompt));
    for (auto& token : prompt) token = int32_t(rng() % uint32_t(weights->config.vocab_size));

    std::vector<double> prefill, decode;
    for (int64_t rep = 0; rep < options->reps; ++rep) {
      const auto stats = generate(model, prompt, options->gen, SamplingParams{}, [](int32_t) { return true; });
      prefill.push_back(stats.prefill_tokens_per_second());
      decode.push_back(stats.decode_tokens_per_second());
    }
    const double decode_tok_s = median(decode);
    const double bytes_per_token = double(weights->decode_weight_bytes());
    nlohmann::ordered_json result = {
        {"model", options->model},
        {"threads", threads},
        {"gemm", gemm_library_name()},
        {"prompt_tokens", options->prompt},
        {"gen_tokens", options->gen},
        {"reps", options->reps},
        {"load_seconds", load_seconds},
        {"weights", weights->file_residence()},
        {"prefill_tok_s", median(prefill)},
        {"decode_tok_s", decode_tok_s},
        {"decode_weight_bytes_per_token", bytes_per_token},
        {"decode_weight_gb_s", decode_tok_s * bytes_per_token / 1e9},
        {"peak_rss_mb", peak_rss_mb()},
        {"huge_page_mb", mapped_in_huge_pages_mb()},
    };
    if (options->json) {
      fmt::print("{}\n", result.dump());
    } else {
      for (const auto& [key, value] : result.items()) fmt::print("{:<30} {}\n", key, value.dump());
    }
  });
}

}  // namespace deepmoe::cli
