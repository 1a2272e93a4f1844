// deepmoe eval: benchmark tasks in lm-evaluation-harness's terms. Multiple-choice tasks by
// log-likelihood: `mc`, a JSONL of {"context", "choices", "gold"}, and `mmlu`, MMLU's CSV files
// posed as lm-eval's default mmlu task. acc and acc_norm with their standard errors, a summary
// table, a results file shaped like lm-eval's, and per-question records (--log-samples).
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <fstream>

#include "cli/common.h"
#include "core/error.h"
#include "eval/mmlu.h"
#include "eval/multiple_choice.h"
#include "io/mapped_file.h"
#include "model/model.h"

namespace deepmoe::cli {

namespace {

struct Options {
  LoadOptions load;
  std::string model, task = "mc", data, split = "test", out, log_samples;
  int64_t limit = 0;
  int num_fewshot = 0, threads = 0;
  bool no_prefix_cache = false;
};

// A task's questions under the name its results carry (mmlu: one per subject).
struct Task {
  std::string name;
  std::vector<eval::Question> questions;
};

std::vector<Task> load_tasks(const Options& o) {
  std::vector<Task> tasks;
  if (o.task == "mc") {
    if (o.num_fewshot > 0) fail("--num-fewshot: the mc task's JSONL carries its own prompts; it takes none");
    tasks.push_back({"mc", eval::load_multiple_choice_jsonl(o.data)});
  } else {
    for (auto& subject : eval::load_mmlu(o.data, o.split, o.num_fewshot))
      tasks.push_back({"mmlu_" + subject.name, std::move(subject.questions)});
  }
  for (Task& t : tasks)
    if (o.limit > 0 && int64_t(t.questions.size()) > o.limit) t.questions.resize(size_t(o.limit));
  return tasks;
}

struct Scored {
  std::vector<double> acc, acc_norm;
};

void run_eval(const Options& o) {
  std::vector<Task> tasks = load_tasks(o);
  const auto weights = load_model(o.model, o.load);
  const auto tokenizer = load_model_tokenizer(o.model);
  Model model(*weights, resolve_threads(o.threads));
  // Every question tokenized first: the cache is sized once, for the longest.
  std::vector<std::vector<eval::EncodedQuestion>> encoded(tasks.size());
  int64_t longest = 0, total = 0;
  for (size_t t = 0; t < tasks.size(); ++t)
    for (const auto& q : tasks[t].questions) {
      encoded[t].push_back(eval::encode_question(*tokenizer, q));
      for (const auto& c : encoded[t].back().continuations)
        longest = std::max(longest, int64_t(encoded[t].back().context.size() + c.size()));
      ++total;
    }
  if (longest > weights->config.max_position_embeddings)
    fail("{}: a question of {} tokens is longer than the model's max_position_embeddings {}", o.data, longest,
         weights->config.max_position_embeddings);
  LatentCache cache(weights->config, longest);
  std::ofstream samples;
  if (!o.log_samples.empty()) {
    samples.open(o.log_samples, std::ios::trunc);
    if (!samples) fail("{}: cannot write", o.log_samples);
  }
  const bool terminal = isatty(STDERR_FILENO) != 0;
  std::vector<Scored> scored(tasks.size());
  Scored all;
  int64_t done = 0, tokens = 0;
  const auto start = std::chrono::steady_clock::now();
  const auto seconds_since_start = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  for (size_t t = 0; t < tasks.size(); ++t)
    for (size_t i = 0; i < tasks[t].questions.size(); ++i) {
      const eval::Question& q = tasks[t].questions[i];
      const eval::EncodedQuestion& e = encoded[t][i];
      const eval::QuestionResult r =
          eval::judge(q, eval::score_continuations(model, cache, e.context, e.continuations, !o.no_prefix_cache));
      for (Scored* s : {&scored[t], &all}) {
        s->acc.push_back(r.correct ? 1.0 : 0.0);
        s->acc_norm.push_back(r.correct_norm ? 1.0 : 0.0);
      }
      // Tokens through the model: the context once (or once per choice without the cache), and
      // each continuation but its last token.
      tokens += int64_t(e.context.size()) * (o.no_prefix_cache ? int64_t(e.continuations.size()) : 1);
      for (const auto& c : e.continuations) tokens += int64_t(c.size()) - 1;
      if (samples.is_open()) {
        nlohmann::json line = {{"task", tasks[t].name},
                               {"doc_id", i},
                               {"context", q.context},
                               {"choices", q.choices},
                               {"gold", q.gold},
                               {"context_tokens", e.context},
                               {"continuation_tokens", e.continuations},
                               {"pred", r.predicted},
                               {"pred_norm", r.predicted_norm},
                               {"acc", r.correct ? 1 : 0},
                               {"acc_norm", r.correct_norm ? 1 : 0}};
        for (const auto& s : r.scores) {
          line["logprobs"].push_back(s.logprob);
          line["greedy"].push_back(s.greedy);
        }
        samples << line.dump() << "\n";
      }
      ++done;
      if (terminal)
        fmt::print(stderr, "\r{}/{} questions, ETA {:.0f}s   ", done, total,
                   seconds_since_start() / double(done) * double(total - done));
    }
  if (terminal) fmt::print(stderr, "\n");
  const double seconds = seconds_since_start();

  // The table, lm-eval's columns; the whole of a multi-subject task first.
  fmt::print("|{:<24}|{:>8}|{:>8}|{:>8}|\n|{:-<24}|{:->8}|{:->8}|{:->8}|\n", "task", "metric", "value", "stderr", "",
             "", "", "");
  nlohmann::json results = nlohmann::json::object(), n_samples = nlohmann::json::object();
  const auto report = [&](const std::string& name, const Scored& s) {
    const eval::Metric a = eval::mean_of(s.acc), an = eval::mean_of(s.acc_norm);
    fmt::print("|{:<24}|{:>8}|{:>8.4f}|{:>8.4f}|\n|{:<24}|{:>8}|{:>8.4f}|{:>8.4f}|\n", name, "acc", a.value, a.stderr_,
               "", "acc_norm", an.value, an.stderr_);
    results[name] = {{"alias", name},
                     {"acc,none", a.value},
                     {"acc_stderr,none", a.stderr_},
                     {"acc_norm,none", an.value},
                     {"acc_norm_stderr,none", an.stderr_}};
    n_samples[name] = {{"original", s.acc.size()}, {"effective", s.acc.size()}};
  };
  if (tasks.size() > 1) report(o.task, all);
  for (size_t t = 0; t < tasks.size(); ++t) report(tasks[t].name, scored[t]);
  fmt::print("{} questions in {:.2f} s: {:.1f} questions/s, {:.0f} tokens/s through the model{}\n", total, seconds,
             double(total) / seconds, double(tokens) / seconds,
             o.no_prefix_cache ? " (each choice with its whole context)" : "");
  if (o.out.empty()) return;
  const nlohmann::json file = {{"results", results},
                               {"n-samples", n_samples},
                               {"config",
                                {{"model", o.model},
                                 {"task", o.task},
                                 {"data", o.data},
                                 {"num_fewshot", o.num_fewshot},
                                 {"limit", o.limit},
                                 {"prefix_cache", !o.no_prefix_cache}}},
                               {"speed", {{"seconds", seconds}, {"questions_per_second", double(total) / seconds}}}};
  const std::string text = file.dump(2) + "\n";
  write_file_atomically(o.out, {reinterpret_cast<const uint8_t*>(text.data()), text.size()});
}

}  // namespace

void add_eval_command(CLI::App& app) {
  auto o = std::make_shared<Options>();
  auto* command = app.add_subcommand("eval", "Score a model on a benchmark task (lm-evaluation-harness's metrics)");
  command->add_option("--model", o->model, "HuggingFace model directory (with its tokenizer)")->required();
  add_load_options(command, o->load);
  command
      ->add_option("--task", o->task,
                   "mc: multiple choice from --data, a JSONL of {\"context\", \"choices\", \"gold\"}; mmlu: MMLU's "
                   "CSV files ({subject}_test.csv, {subject}_dev.csv) under the directory --data")
      ->check(CLI::IsMember({"mc", "mmlu"}));
  command->add_option("--data", o->data, "the task's questions (a file, or for mmlu a directory)")->required();
  command->add_option("--split", o->split, "mmlu: the split scored (test, val)");
  command->add_option("--num-fewshot", o->num_fewshot, "mmlu: worked examples from dev before each question");
  command->add_option("--limit", o->limit, "only the first N questions of each task (0: all)")
      ->check(CLI::NonNegativeNumber);
  command->add_option("--out", o->out, "results JSON (lm-eval's layout)");
  command->add_option("--log-samples", o->log_samples, "one JSON line per question: tokens, scores, answer");
  command->add_flag("--no-prefix-cache", o->no_prefix_cache,
                    "run each choice with its whole context (the naive loop; to measure what the cache saves)");
  command->add_option("--threads", o->threads, "threads (0: all cores)");
  command->callback([o] { run_eval(*o); });
}

}  // namespace deepmoe::cli
