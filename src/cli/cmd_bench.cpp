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

using Clock = std::chrono::steady_clock;

double seconds(Clock::time_point since) { return std::chrono::duration<double>(Clock::now() - since).count(); }

// What speculative decoding's verify step costs: one pass over n = 1..max_positions positions
// after the prompt (random tokens: drafts that agree with nothing, the most experts), its time
// and weight bytes against one decode step, the MTP module's draft step, and from them the
// speedup K drafts a step give at the acceptance rates DeepSeek report for V3's MTP (85-90 %).
nlohmann::ordered_json verify_costs(Model& model, const ModelWeights& weights, std::span<const int32_t> prompt,
                                    int64_t max_positions, int64_t reps) {
  if (max_positions < 2 || max_positions > 16) fail("bench: --verify must be in [2, 16], found {}", max_positions);
  const Config& c = weights.config;
  const int64_t prompt_length = int64_t(prompt.size());
  LatentCache cache(c, prompt_length + max_positions + 1);
  std::vector<float> logits(size_t((max_positions + 1) * c.vocab_size)), hidden(size_t(prompt_length * c.hidden_size));
  model.forward(prompt, cache, LogitsFor::LastToken, logits.data(), hidden.data());
  // decode_weight_bytes counts num_experts_per_tok experts per MoE layer; a pass reads the ones it routed to.
  int64_t moe_layers = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) moe_layers += c.is_moe_layer(l);
  const double expert_bytes = double(weights.routed_expert_bytes());
  const double fixed_bytes =
      double(weights.decode_weight_bytes()) - double(moe_layers * c.num_experts_per_tok) * expert_bytes;
  std::mt19937 rng(99);
  // Every pass size once per round, rounds interleaved: the machine's drift (neighbours on the
  // memory bus) falls on all sizes alike.
  std::vector<std::vector<double>> samples(static_cast<size_t>(max_positions)), bytes(samples.size());
  for (int64_t rep = 0; rep < reps; ++rep)
    for (int64_t n = 1; n <= max_positions; ++n) {
      std::vector<int32_t> tokens(static_cast<size_t>(n));
      for (auto& token : tokens) token = int32_t(rng() % uint32_t(c.vocab_size));
      cache.length = prompt_length;
      const auto start = Clock::now();
      model.forward(tokens, cache, LogitsFor::AllTokens, logits.data());
      samples[size_t(n - 1)].push_back(seconds(start));
      bytes[size_t(n - 1)].push_back(fixed_bytes + double(model.experts_read()) * expert_bytes);
    }
  nlohmann::ordered_json passes = nlohmann::json::array();
  std::vector<double> times, read;
  for (int64_t n = 1; n <= max_positions; ++n) {
    times.push_back(median(samples[size_t(n - 1)]));
    read.push_back(median(bytes[size_t(n - 1)]));
    passes.push_back({{"positions", n},
                      {"seconds", times.back()},
                      {"time_vs_one", times.back() / times.front()},
                      {"weight_bytes", read.back()},
                      {"bytes_vs_one", read.back() / read.front()}});
  }
  nlohmann::ordered_json out = {{"passes", passes}};
  if (c.num_nextn_predict_layers == 0) return out;
  std::vector<double> draft_samples;
  const int32_t token = prompt.back();
  std::vector<float> state(size_t(c.hidden_size));
  for (int64_t rep = 0; rep < reps; ++rep) {
    const auto start = Clock::now();
    model.draft(0, std::span(&token, 1), prompt_length - 1, cache, hidden.data() + (prompt_length - 1) * c.hidden_size,
                LogitsFor::LastToken, logits.data(), state.data());
    draft_samples.push_back(seconds(start));
  }
  const double draft = median(draft_samples);
  out["mtp_draft_seconds"] = draft;
  // The head's rows past the draft vocabulary are not read.
  out["mtp_draft_weight_bytes"] =
      weights.decode_weight_bytes(true) - size_t(c.vocab_size - model.draft_vocabulary()) * weights.lm_head.row_bytes();
  out["draft_vocabulary"] = model.draft_vocabulary();
  // K drafts a step, each kept with probability a given the ones before: 1 + a + ... + a^K tokens
  // for one verify pass of K + 1 positions and K draft steps.
  nlohmann::ordered_json modeled = nlohmann::json::array();
  for (const double acceptance : {0.85, 0.9, 0.7})
    for (int64_t k = 1; k < max_positions; ++k) {
      double tokens = 0, kept = 1;
      for (int64_t j = 0; j <= k; ++j, kept *= acceptance) tokens += kept;
      const double step = times[size_t(k)] + double(k) * draft;
      modeled.push_back({{"acceptance", acceptance},
                         {"drafts", k},
                         {"tokens_per_step", tokens},
                         {"speedup", tokens * times.front() / step}});
    }
  out["modeled_speedup"] = modeled;
  return out;
}

}  // namespace

void add_bench_command(CLI::App& app) {
  struct Options {
    LoadOptions load;
    std::string model;
    int threads = 0;
    int64_t prompt = 64, gen = 32, reps = 3, verify = 0, draft_vocab = 0;
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
  command->add_option("--verify", options->verify,
                      "also time one pass over 1..N positions after the prompt (a speculative verify step of N - 1 "
                      "drafts) against one decode step, with the weight bytes each reads, and the MTP module's draft "
                      "step; N in [2, 16]");
  command->add_option("--draft-vocab", options->draft_vocab,
                      "with --verify: the MTP draft's head over the first N ids");
  command->add_flag("--json", options->json, "print one JSON object");
  command->callback([options] {
    if (options->prompt < 1 || options->gen < 2 || options->reps < 1)
      fail("bench: need --prompt >= 1, --gen >= 2, --reps >= 1");
    const auto load_start = Clock::now();
    const auto weights = load_model(options->model, options->load);
    const double load_seconds = seconds(load_start);
    const int threads = resolve_threads(options->threads);
    warn_if_gemm_is_held_back();
    Model model(*weights, threads);
    if (options->draft_vocab != 0) model.set_draft_vocabulary(options->draft_vocab);
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
    if (options->verify != 0) result["verify"] = verify_costs(model, *weights, prompt, options->verify, options->reps);
    if (options->json) {
      fmt::print("{}\n", result.dump());
    } else {
      for (const auto& [key, value] : result.items()) fmt::print("{:<30} {}\n", key, value.dump());
    }
  });
}

}  // namespace deepmoe::cli
