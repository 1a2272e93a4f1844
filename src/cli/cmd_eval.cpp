// deepmoe eval: benchmark tasks in lm-evaluation-harness's terms, on this process's model or on
// any OpenAI-compatible server (--endpoint). Multiple choice by log-likelihood (mc, mmlu,
// hellaswag), generation with answer extraction (gsm8k, gsm8k-cot), code by execution
// (humaneval). A summary table, a results file shaped like lm-eval's with the speed figures
// beside the scores, and per-sample records (--log-samples).
#include <nlohmann/json.hpp>

#include <chrono>
#include <fstream>
#include <optional>

#include "cli/common.h"
#include "core/error.h"
#include "eval/engine_backend.h"
#include "eval/gsm8k.h"
#include "eval/hellaswag.h"
#include "eval/http_backend.h"
#include "eval/humaneval.h"
#include "eval/mmlu.h"
#include "eval/run_code.h"
#include "eval/run_generation.h"
#include "eval/run_multiple_choice.h"
#include "eval/speed.h"
#include "io/mapped_file.h"
#include "model/model.h"

namespace deepmoe::cli {

namespace {

struct Options {
  LoadOptions load;
  std::string model, task = "mc", data, fewshot_data, split = "test", out, log_samples;
  std::string endpoint, api_key, endpoint_model;
  int64_t limit = 0, max_gen_toks = 0, samples = 1;
  int num_fewshot = -1, threads = 0, concurrency = 8;
  std::vector<int64_t> pass_k = {1};
  SamplingParams sampling;
  eval::SandboxLimits sandbox;
  double kv_cache_mb = 1024;
  int64_t max_batch = 32;
  bool no_prefix_cache = false;
};

bool is_multiple_choice(const std::string& task) { return task == "mc" || task == "mmlu" || task == "hellaswag"; }

// The tasks' inputs, loaded and checked before any model is.
struct Inputs {
  std::vector<std::pair<std::string, std::vector<eval::Question>>> multiple_choice;  // mmlu: one per subject
  std::vector<eval::Problem> problems, fewshot;
  std::vector<eval::CodeTask> code;
  std::string first_prompt;  // for the latency probe
};

template <typename T>
void keep_first(std::vector<T>& items, int64_t limit) {
  if (limit > 0 && int64_t(items.size()) > limit) items.resize(size_t(limit));
}

Inputs load_inputs(const Options& o) {
  Inputs in;
  const bool mc = is_multiple_choice(o.task);
  if (o.num_fewshot > 0 && (o.task == "mc" || o.task == "hellaswag" || o.task == "humaneval"))
    fail("--num-fewshot: the {} task takes no worked examples", o.task);
  if (!o.fewshot_data.empty() && o.task.rfind("gsm8k", 0) != 0) fail("--fewshot-data is for gsm8k and gsm8k-cot");
  if (o.task == "mc") in.multiple_choice.push_back({"mc", eval::load_multiple_choice_jsonl(o.data)});
  if (o.task == "hellaswag") in.multiple_choice.push_back({"hellaswag", eval::load_hellaswag(o.data)});
  if (o.task == "mmlu")
    for (auto& subject : eval::load_mmlu(o.data, o.split, std::max(o.num_fewshot, 0)))
      in.multiple_choice.push_back({"mmlu_" + subject.name, std::move(subject.questions)});
  for (auto& [name, questions] : in.multiple_choice) keep_first(questions, o.limit);
  if (mc) in.first_prompt = in.multiple_choice.front().second.front().context;
  if (o.task == "gsm8k" || o.task == "gsm8k-cot") {
    const auto variant = eval::parse_gsm8k_variant(o.task);
    in.problems = eval::load_gsm8k_jsonl(o.data);
    keep_first(in.problems, o.limit);
    const int64_t shots = o.num_fewshot >= 0 ? o.num_fewshot : eval::gsm8k_default_fewshot(variant);
    if (shots > 0) {
      if (o.fewshot_data.empty())
        fail(
            "--task {} takes {} worked examples: name their JSONL with --fewshot-data (GSM8K's train split), or "
            "pass --num-fewshot 0",
            o.task, shots);
      in.fewshot = eval::load_gsm8k_jsonl(o.fewshot_data);
      if (int64_t(in.fewshot.size()) < shots)
        fail("{}: {} examples, fewer than --num-fewshot {}", o.fewshot_data, in.fewshot.size(), shots);
      in.fewshot.resize(size_t(shots));
    }
    in.first_prompt = eval::gsm8k_prompt(variant, in.fewshot, in.problems.front());
  }
  if (o.task == "humaneval") {
    in.code = eval::load_humaneval_jsonl(o.data);
    keep_first(in.code, o.limit);
    in.first_prompt = in.code.front().prompt;
  }
  return in;
}

void print_table(const std::vector<eval::TaskResult>& results) {
  fmt::print("|{:<28}|{:>30}|{:>8}|{:>8}|\n|{:-<28}|{:->30}|{:->8}|{:->8}|\n", "task", "metric", "value", "stderr", "",
             "", "", "");
  for (const auto& r : results)
    for (size_t m = 0; m < r.scores.size(); ++m) {
      const eval::Metric metric = eval::mean_of(r.scores[m].second);
      fmt::print("|{:<28}|{:>30}|{:>8.4f}|{:>8.4f}|\n", m == 0 ? r.name : "", r.scores[m].first, metric.value,
                 metric.stderr_);
    }
}

// lm-eval's "results" entry of a task: each "metric,filter" and its "metric_stderr,filter".
nlohmann::json results_entry(const eval::TaskResult& r) {
  nlohmann::json entry = {{"alias", r.name}};
  for (const auto& [name, values] : r.scores) {
    const eval::Metric metric = eval::mean_of(values);
    const size_t comma = name.find(',');
    entry[name] = metric.value;
    entry[name.substr(0, comma) + "_stderr" + name.substr(comma)] = metric.stderr_;
  }
  return entry;
}

void run_eval(const Options& o) {
  if (o.data.empty()) fail("--data: required for --task {}", o.task);
  Inputs in = load_inputs(o);
  const auto tokenizer = load_model_tokenizer(o.model);
  // Every question tokenized once, as lm-eval splits it: for the context the engine needs and for scoring.
  std::vector<std::vector<eval::EncodedQuestion>> encoded;
  for (const auto& [name, questions] : in.multiple_choice)
    encoded.push_back(eval::encode_questions(*tokenizer, questions));
  std::unique_ptr<ModelWeights> weights;
  std::unique_ptr<Model> model;
  std::unique_ptr<eval::Backend> backend;
  std::string backend_name;
  if (!o.endpoint.empty()) {
    if (o.no_prefix_cache) fail("--no-prefix-cache measures this process's engine; it does not apply to --endpoint");
    eval::HttpBackendOptions h{o.endpoint, o.api_key, o.endpoint_model, o.concurrency, 600};
    auto http = std::make_unique<eval::HttpBackend>(*tokenizer, h);
    backend_name = fmt::format("{} ({})", o.endpoint, http->model());
    backend = std::move(http);
  } else {
    weights = load_model(o.model, o.load);
    // Built as the server builds it: the same scores in process and over HTTP.
    ModelOptions model_options;
    model_options.threads = resolve_threads(o.threads);
    model_options.attention_mode = AttentionMode::Absorbed;
    model_options.context.batch_invariant = true;
    model = std::make_unique<Model>(*weights, model_options);
    // The context the longest request needs.
    int64_t longest = int64_t(tokenizer->encode(in.first_prompt, true).size()) + 32;
    for (const auto& task : encoded)
      for (const auto& e : task)
        for (const auto& c : e.continuations) longest = std::max(longest, int64_t(e.context.size() + c.size()) + 1);
    const int64_t gen_tokens = o.max_gen_toks > 0      ? o.max_gen_toks
                               : o.task == "humaneval" ? eval::kHumanEvalMaxGenTokens
                               : in.problems.empty()   ? 0
                                                       : eval::gsm8k_max_gen_toks(eval::parse_gsm8k_variant(o.task));
    for (const auto& p : in.problems)
      longest = std::max(
          longest,
          int64_t(
              tokenizer->encode(eval::gsm8k_prompt(eval::parse_gsm8k_variant(o.task), in.fewshot, p), true).size()) +
              gen_tokens);
    for (const auto& t : in.code)
      longest = std::max(longest, int64_t(tokenizer->encode(t.prompt, true).size()) + gen_tokens);
    const int64_t limit = weights->config.max_position_embeddings;
    if (is_multiple_choice(o.task) && longest > limit)
      fail("{}: a question of {} tokens is longer than the model's max_position_embeddings {}", o.data, longest, limit);
    eval::EngineBackendOptions e;
    e.context = std::min(longest, limit);
    e.kv_cache_mb = o.kv_cache_mb;
    e.max_batch = o.max_batch;
    e.naive = o.no_prefix_cache;
    if (e.naive && !is_multiple_choice(o.task)) fail("--no-prefix-cache applies to multiple-choice tasks only");
    backend = std::make_unique<eval::EngineBackend>(*model, *tokenizer, e);
    backend_name = o.model;
  }

  std::ofstream samples;
  if (!o.log_samples.empty()) {
    samples.open(o.log_samples, std::ios::trunc);
    if (!samples) fail("{}: cannot write", o.log_samples);
  }
  eval::TaskIo io;
  if (samples.is_open()) io.log_sample = [&](const nlohmann::json& line) { samples << line.dump() << "\n"; };

  // The latency of one request alone, before the tasks fill the prefix cache (a server's may hold
  // the prompt already): after a warm-up request, so one-time costs stay out of it.
  const eval::GenerationRequest warm_up{"warm up", {}, 2, {}, true};
  backend->generate(std::span(&warm_up, 1));
  const nlohmann::json latency = eval::latency_probe(*backend, in.first_prompt);

  std::vector<eval::TaskResult> results;
  std::vector<eval::Generation> generations;
  int64_t total = 0;
  const int64_t tokens_before = backend->tokens_computed();
  const auto start = std::chrono::steady_clock::now();
  if (is_multiple_choice(o.task)) {
    for (const auto& [name, questions] : in.multiple_choice) total += int64_t(questions.size());
    eval::Progress progress(total, "questions");
    io.progress = &progress;
    for (size_t t = 0; t < in.multiple_choice.size(); ++t)
      results.push_back(eval::run_multiple_choice(*backend, in.multiple_choice[t].first, in.multiple_choice[t].second,
                                                  encoded[t], io));
    progress.finish();
    if (results.size() > 1) results.insert(results.begin(), eval::pooled(o.task, results));
  } else if (!in.problems.empty()) {
    total = int64_t(in.problems.size());
    eval::Progress progress(total, "problems");
    io.progress = &progress;
    results.push_back(eval::run_gsm8k(*backend, eval::parse_gsm8k_variant(o.task), in.problems, in.fewshot,
                                      o.max_gen_toks, io, generations));
    progress.finish();
  } else {
    total = int64_t(in.code.size());
    eval::Progress progress(total * o.samples, "programs");
    io.progress = &progress;
    eval::CodeOptions c;
    c.samples = o.samples;
    c.sampling = o.sampling;
    c.k = o.pass_k;
    c.limits = o.sandbox;
    c.max_gen_toks = o.max_gen_toks;
    results.push_back(eval::run_humaneval(*backend, in.code, c, io, generations));
    progress.finish();
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const int64_t tokens = backend->tokens_computed() - tokens_before;
  nlohmann::json speed = {{"seconds", seconds},
                          {"samples_per_second", double(total) / seconds},
                          {"prompt_tokens", tokens},
                          {"prompt_tokens_per_second", double(tokens) / seconds}};
  if (!generations.empty()) speed["generation"] = eval::generation_speed(generations);
  speed["latency"] = latency;

  print_table(results);
  fmt::print("{} {} in {:.2f} s: {:.2f}/s; {} prompt tokens through the model ({:.0f}/s){}\n", total,
             is_multiple_choice(o.task) ? "questions" : "samples", seconds, double(total) / seconds, tokens,
             double(tokens) / seconds, o.no_prefix_cache ? " (naive: each choice with its whole context)" : "");
  fmt::print(
      "latency alone: {:.1f} ms to the first token ({} prompt tokens, {:.2f} ms/token), {:.2f} ms/token decoding\n",
      latency["time_to_first_token_ms"].get<double>(), latency["prompt_tokens"].get<int64_t>(),
      latency["prompt_ms_per_token"].get<double>(), latency.value("decode_ms_per_token", 0.0));
  if (o.out.empty()) return;
  nlohmann::json results_json = nlohmann::json::object(), n_samples = nlohmann::json::object();
  for (const auto& r : results) {
    results_json[r.name] = results_entry(r);
    n_samples[r.name] = {{"original", r.samples()}, {"effective", r.samples()}};
  }
  const nlohmann::json file = {{"results", results_json},
                               {"n-samples", n_samples},
                               {"config",
                                {{"model", o.model},
                                 {"backend", backend_name},
                                 {"task", o.task},
                                 {"data", o.data},
                                 {"num_fewshot", o.num_fewshot},
                                 {"limit", o.limit},
                                 {"prefix_cache", !o.no_prefix_cache}}},
                               {"speed", speed},
                               {"versions", {{"deepmoe", "0.1"}}}};
  const std::string text = file.dump(2) + "\n";
  write_file_atomically(o.out, {reinterpret_cast<const uint8_t*>(text.data()), text.size()});
}

}  // namespace

void add_eval_command(CLI::App& app) {
  auto o = std::make_shared<Options>();
  auto* command = app.add_subcommand("eval", "Score a model on a benchmark task (lm-evaluation-harness's metrics)");
  command->add_option("--model", o->model, "HuggingFace model directory (with --endpoint: only its tokenizer is used)")
      ->required();
  add_load_options(command, o->load);
  command
      ->add_option("--task", o->task,
                   "mc (JSONL of {\"context\", \"choices\", \"gold\"}), mmlu (MMLU's CSV directory), hellaswag "
                   "(llama-perplexity's 6-line text), gsm8k, gsm8k-cot (GSM8K JSONL), humaneval (HumanEval JSONL)")
      ->check(CLI::IsMember({"mc", "mmlu", "hellaswag", "gsm8k", "gsm8k-cot", "humaneval"}));
  command->add_option("--data", o->data, "the task's questions (a file, or for mmlu a directory)")->required();
  command->add_option("--fewshot-data", o->fewshot_data, "gsm8k: the JSONL whose first K problems are the examples");
  command->add_option("--split", o->split, "mmlu: the split scored (test, val)");
  command
      ->add_option("--num-fewshot", o->num_fewshot,
                   "worked examples before each question (default: the task's; mmlu 0, gsm8k 5, gsm8k-cot 8)")
      ->check(CLI::Range(0, 64));
  command->add_option("--limit", o->limit, "only the first N questions of each task (0: all)")
      ->check(CLI::NonNegativeNumber);
  command->add_option("--out", o->out, "results JSON (lm-eval's layout, with the speed figures)");
  command->add_option("--log-samples", o->log_samples, "one JSON line per sample: prompt, target, answer, score");
  command->add_option("--max-gen-toks", o->max_gen_toks, "generation tasks: tokens per answer (default: the task's)")
      ->check(CLI::PositiveNumber);
  command->add_option("--samples", o->samples, "humaneval: programs per task (n of pass@k)")
      ->check(CLI::Range(1, 1000));
  command->add_option("--pass-k", o->pass_k, "humaneval: the k of pass@k, each <= --samples (default 1)")
      ->delimiter(',')
      ->check(CLI::PositiveNumber);
  command->add_option("--temperature", o->sampling.temperature, "humaneval: sampling temperature (default 0: greedy)")
      ->check(CLI::Range(0.0, 2.0));
  command->add_option("--top-p", o->sampling.top_p, "humaneval: nucleus sampling (default 1: off)")
      ->check(CLI::Range(0.0, 1.0));
  command->add_option("--seed", o->sampling.seed, "sampling seed (sample i uses seed + i)");
  command->add_option("--timeout", o->sandbox.wall_seconds, "humaneval: seconds each program may run (default 10)")
      ->check(CLI::Range(0.1, 3600.0));
  command->add_flag("--no-prefix-cache", o->no_prefix_cache,
                    "multiple choice: one plain forward per choice with its whole context (the naive loop, to "
                    "measure what batching and the cache save)");
  command->add_option("--threads", o->threads, "threads (0: all cores)");
  command->add_option("--kv-cache-mb", o->kv_cache_mb, "the engine's latent cache (default 1024)")
      ->check(CLI::Range(1.0, 1e7));
  command->add_option("--max-batch", o->max_batch, "sequences per engine step (default 32)")
      ->check(CLI::Range(1, 4096));
  command->add_option("--endpoint", o->endpoint,
                      "run the tasks against an OpenAI-compatible server (http://host:port); --model names the "
                      "tokenizer");
  command->add_option("--api-key", o->api_key, "the server's key (default: $OPENAI_API_KEY)");
  command->add_option("--endpoint-model", o->endpoint_model, "the model id to send (default: the server's first)");
  command->add_option("--concurrency", o->concurrency, "--endpoint: requests in flight (default 8)")
      ->check(CLI::Range(1, 256));
  command->callback([o] {
    if (o->api_key.empty())
      if (const char* key = std::getenv("OPENAI_API_KEY")) o->api_key = key;
    for (int64_t k : o->pass_k)
      if (k > o->samples) fail("--pass-k {} needs at least {} --samples", k, k);
    if (o->task != "humaneval" && (o->samples != 1 || o->sampling.temperature != 0))
      fail("--samples and --temperature are for humaneval");
    run_eval(*o);
  });
}

}  // namespace deepmoe::cli
