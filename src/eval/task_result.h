// What running a task gives: its metrics under lm-evaluation-harness's names ("acc,none",
// "exact_match,strict-match", "pass@1,create_test"), each with its standard error, and the
// per-sample records and progress it reports along the way.
#pragma once
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "eval/multiple_choice.h"

namespace deepmoe::eval {

struct TaskResult {
  std::string name;
  // "metric,filter" → each sample's score (a question's 0/1, a problem's pass@k estimate).
  std::vector<std::pair<std::string, std::vector<double>>> scores;
  int64_t samples() const { return scores.empty() ? 0 : int64_t(scores.front().second.size()); }
};

// The tasks' samples pooled under one name (mmlu's whole from its subjects: lm-eval weights the
// subjects by their size, which is the same thing).
TaskResult pooled(const std::string& name, const std::vector<TaskResult>& parts);

// done/total with an ETA on one terminal line (nothing when stderr is not a terminal).
class Progress {
 public:
  Progress(int64_t total, std::string unit);
  void advance(int64_t n);
  void finish();

 private:
  int64_t total_, done_ = 0;
  std::string unit_;
  bool terminal_;
  std::chrono::steady_clock::time_point start_;
};

// Where a task sends its per-sample records (--log-samples) and its progress.
struct TaskIo {
  std::function<void(const nlohmann::json&)> log_sample;  // may be empty
  Progress* progress = nullptr;
};

}  // namespace deepmoe::eval
