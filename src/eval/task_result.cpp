#include "eval/task_result.h"

#include <fmt/format.h>
#include <unistd.h>

namespace deepmoe::eval {

TaskResult pooled(const std::string& name, const std::vector<TaskResult>& parts) {
  TaskResult whole{name, {}};
  for (const TaskResult& part : parts)
    for (size_t m = 0; m < part.scores.size(); ++m) {
      if (whole.scores.size() <= m) whole.scores.push_back({part.scores[m].first, {}});
      auto& values = whole.scores[m].second;
      values.insert(values.end(), part.scores[m].second.begin(), part.scores[m].second.end());
    }
  return whole;
}

Progress::Progress(int64_t total, std::string unit)
    : total_(total),
      unit_(std::move(unit)),
      terminal_(isatty(STDERR_FILENO) != 0),
      start_(std::chrono::steady_clock::now()) {}

void Progress::advance(int64_t n) {
  done_ += n;
  if (!terminal_ || done_ == 0) return;
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  fmt::print(stderr, "\r{}/{} {}, ETA {:.0f}s   ", done_, total_, unit_,
             seconds / double(done_) * double(total_ - done_));
}

void Progress::finish() {
  if (terminal_) fmt::print(stderr, "\n");
}

}  // namespace deepmoe::eval
