// deepmoe eval: benchmark tasks in lm-evaluation-harness's terms. This first part: multiple-choice
// tasks by log-likelihood from the generic JSONL ({"context", "choices", "gold"} per line), with
// acc and acc_norm and their standard errors, a results file shaped like lm-eval's, and
// per-question records (--log-samples).
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <fstream>

#include "cli/common.h"
#include "core/error.h"
#include "eval/multiple_choice.h"
#include "io/mapped_file.h"
#include "model/model.h"

namespace deepmoe::cli {

void add_eval_command(CLI::App& app) {
  struct Options {
    LoadOptions load;
    std::string model, task = "mc", data, out, log_samples;
    int64_t limit = 0;
    int threads = 0;
  };
  auto o = std::make_shared<Options>();
  auto* command = app.add_subcommand("eval", "Score a model on a benchmark task (lm-evaluation-harness's metrics)");
  command->add_option("--model", o->model, "HuggingFace model directory (with its tokenizer)")->required();
  add_load_options(command, o->load);
  command
      ->add_option("--task", o->task,
                   "mc: multiple choice by log-likelihood from --data, a JSONL of {\"context\", \"choices\", \"gold\"}")
      ->check(CLI::IsMember({"mc"}));
  command->add_option("--data", o->data, "the task's questions")->required();
  command->add_option("--limit", o->limit, "only the first N questions (0: all)")->check(CLI::NonNegativeNumber);
  command->add_option("--out", o->out, "results JSON (lm-eval's layout)");
  command->add_option("--log-samples", o->log_samples, "one JSON line per question: tokens, scores, answer");
  command->add_option("--threads", o->threads, "threads (0: all cores)");
  command->callback([o] {
    std::vector<eval::Question> questions = eval::load_multiple_choice_jsonl(o->data);
    if (o->limit > 0 && int64_t(questions.size()) > o->limit) questions.resize(size_t(o->limit));
    const auto weights = load_model(o->model, o->load);
    const auto tokenizer = load_model_tokenizer(o->model);
    Model model(*weights, resolve_threads(o->threads));
    std::vector<eval::EncodedQuestion> encoded;
    int64_t longest = 0;
    for (const auto& q : questions) {
      encoded.push_back(eval::encode_question(*tokenizer, q));
      for (const auto& c : encoded.back().continuations)
        longest = std::max(longest, int64_t(encoded.back().context.size() + c.size()));
    }
    if (longest > weights->config.max_position_embeddings)
      fail("{}: a question of {} tokens is longer than the model's max_position_embeddings {}", o->data, longest,
           weights->config.max_position_embeddings);
    LatentCache cache(weights->config, longest);
    std::ofstream samples;
    if (!o->log_samples.empty()) {
      samples.open(o->log_samples, std::ios::trunc);
      if (!samples) fail("{}: cannot write", o->log_samples);
    }
    const bool terminal = isatty(STDERR_FILENO) != 0;
    std::vector<double> acc, acc_norm;
    int64_t tokens = 0;
    const auto start = std::chrono::steady_clock::now();
    for (size_t i = 0; i < questions.size(); ++i) {
      const eval::EncodedQuestion& e = encoded[i];
      eval::QuestionResult r =
          eval::judge(questions[i], eval::score_continuations(model, cache, e.context, e.continuations));
      acc.push_back(r.correct ? 1.0 : 0.0);
      acc_norm.push_back(r.correct_norm ? 1.0 : 0.0);
      tokens += int64_t(e.context.size());
      for (const auto& c : e.continuations) tokens += int64_t(c.size()) - 1;
      if (samples.is_open()) {
        nlohmann::json line = {{"doc_id", i},
                               {"context", questions[i].context},
                               {"choices", questions[i].choices},
                               {"gold", questions[i].gold},
                               {"context_tokens", e.context},
                               {"continuation_tokens", e.continuations},
                               {"pred", r.predicted},
                               {"pred_norm", r.predicted_norm},
                               {"acc", acc.back()},
                               {"acc_norm", acc_norm.back()}};
        for (const auto& s : r.scores) {
          line["logprobs"].push_back(s.logprob);
          line["greedy"].push_back(s.greedy);
        }
        samples << line.dump() << "\n";
      }
      if (terminal) {
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        fmt::print(stderr, "\r{}/{} questions, ETA {:.0f}s   ", i + 1, questions.size(),
                   seconds / double(i + 1) * double(questions.size() - i - 1));
      }
    }
    if (terminal) fmt::print(stderr, "\n");
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const eval::Metric a = eval::mean_of(acc), an = eval::mean_of(acc_norm);
    const std::string task = o->task;
    fmt::print("|{:<10}|{:>8}|{:>9}|{:>9}|\n|{:-<10}|{:->8}|{:->9}|{:->9}|\n", "task", "metric", "value", "stderr", "",
               "", "", "");
    fmt::print("|{:<10}|{:>8}|{:>9.4f}|{:>9.4f}|\n", task, "acc", a.value, a.stderr_);
    fmt::print("|{:<10}|{:>8}|{:>9.4f}|{:>9.4f}|\n", task, "acc_norm", an.value, an.stderr_);
    fmt::print("{} questions in {:.2f} s: {:.1f} questions/s, {:.0f} tokens/s through the model\n", questions.size(),
               seconds, double(questions.size()) / seconds, double(tokens) / seconds);
    if (o->out.empty()) return;
    const nlohmann::json results = {
        {"results",
         {{task,
           {{"alias", task},
            {"acc,none", a.value},
            {"acc_stderr,none", a.stderr_},
            {"acc_norm,none", an.value},
            {"acc_norm_stderr,none", an.stderr_}}}}},
        {"n-samples", {{task, {{"original", questions.size()}, {"effective", questions.size()}}}}},
        {"config", {{"model", o->model}, {"data", o->data}, {"limit", o->limit}}},
        {"speed", {{"seconds", seconds}, {"questions_per_second", double(questions.size()) / seconds}}}};
    const std::string text = results.dump(2) + "\n";
    write_file_atomically(o->out, {reinterpret_cast<const uint8_t*>(text.data()), text.size()});
  });
}

}  // namespace deepmoe::cli
