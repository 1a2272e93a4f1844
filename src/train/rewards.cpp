#include "train/rewards.h"

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <cctype>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "tokenizer/regex.h"

namespace deepmoe::train {

namespace {

bool is_number_char(char c) { return std::isdigit(static_cast<unsigned char>(c)) || c == '.' || c == ',' || c == '$'; }

std::string normalized(std::string number) {
  std::erase_if(number, [](char c) { return c == ',' || c == '$'; });
  while (!number.empty() && number.back() == '.') number.pop_back();
  return number;
}

// The run of number characters starting at `at` (a leading '-' kept), if it holds a digit.
std::string number_at(const std::string& text, size_t at) {
  size_t end = at + (at < text.size() && text[at] == '-' ? 1 : 0);
  while (end < text.size() && is_number_char(text[end])) ++end;
  const std::string run = text.substr(at, end - at);
  return run.find_first_of("0123456789") == std::string::npos ? std::string() : run;
}

bool same_answer(const std::string& a, const std::string& b) {
  if (a.empty() || b.empty()) return false;
  if (a == b) return true;
  char *end_a = nullptr, *end_b = nullptr;
  const double x = std::strtod(a.c_str(), &end_a), y = std::strtod(b.c_str(), &end_b);
  return *end_a == '\0' && *end_b == '\0' && x == y;
}

class ExactMatch : public Reward {
 public:
  std::vector<double> score(const std::vector<Completion>& batch) override {
    std::vector<double> out;
    for (const Completion& c : batch) out.push_back(same_answer(final_answer(c.completion), final_answer(c.answer)));
    return out;
  }
};

class FormatReward : public Reward {
 public:
  std::vector<double> score(const std::vector<Completion>& batch) override {
    std::vector<double> out;
    for (const Completion& c : batch) {
      const size_t start = c.completion.find_first_not_of(" \t\r\n");
      const size_t close = c.completion.find("</think>");
      const bool ok = start != std::string::npos && c.completion.compare(start, 7, "<think>") == 0 &&
                      close != std::string::npos && close > start &&
                      c.completion.find_first_not_of(" \t\r\n", close + 8) != std::string::npos;
      out.push_back(ok ? 1.0 : 0.0);
    }
    return out;
  }
};

class RegexReward : public Reward {
 public:
  explicit RegexReward(const std::string& pattern) : regex_(pattern) {}
  std::vector<double> score(const std::vector<Completion>& batch) override {
    std::vector<double> out;
    std::vector<std::pair<size_t, size_t>> matches;
    for (const Completion& c : batch) {
      matches.clear();
      regex_.find_all(c.completion, matches);
      bool found = false;
      for (const auto& [b, e] : matches) found = found || e > b;
      out.push_back(found ? 1.0 : 0.0);
    }
    return out;
  }

 private:
  Regex regex_;
};

class ExternalReward : public Reward {
 public:
  ExternalReward(std::string command, double timeout) : command_(std::move(command)), timeout_(timeout) {}
  std::vector<double> score(const std::vector<Completion>& batch) override {
    std::string input;
    for (const Completion& c : batch)
      input += nlohmann::json{{"prompt", c.prompt}, {"completion", c.completion}, {"answer", c.answer}}.dump(
                   -1, ' ', false, nlohmann::json::error_handler_t::replace) +
               "\n";
    int to_child[2], from_child[2];
    if (pipe(to_child) != 0 || pipe(from_child) != 0) fail("--reward-cmd: cannot create pipes");
    const pid_t pid = fork();
    if (pid < 0) fail("--reward-cmd: cannot fork");
    if (pid == 0) {
      setpgid(0, 0);  // its own process group: a timeout kills what it started too
      dup2(to_child[0], 0);
      dup2(from_child[1], 1);
      close(to_child[1]);
      close(from_child[0]);
      execl("/bin/sh", "sh", "-c", command_.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    setpgid(pid, pid);  // as the child does, whichever runs first
    close(to_child[0]);
    close(from_child[1]);
    // The input from a thread of its own: a program that answers before it has read everything
    // must not deadlock against a full pipe.
    std::thread writer([&] {
      // A program that exits without reading everything: EPIPE for this thread's write, not a
      // SIGPIPE that would end the trainer (blocked here only; the signal dies with the thread).
      sigset_t pipe_signal;
      sigemptyset(&pipe_signal);
      sigaddset(&pipe_signal, SIGPIPE);
      pthread_sigmask(SIG_BLOCK, &pipe_signal, nullptr);
      size_t done = 0;
      while (done < input.size()) {
        const ssize_t n = write(to_child[1], input.data() + done, input.size() - done);
        if (n <= 0) break;
        done += size_t(n);
      }
      close(to_child[1]);
    });
    std::string output;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_);
    bool timed_out = false;
    char buffer[4096];
    while (true) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) {
        timed_out = true;
        break;
      }
      pollfd p{from_child[0], POLLIN, 0};
      if (poll(&p, 1, int(std::min<int64_t>(left.count(), 1000))) <= 0) continue;
      const ssize_t n = read(from_child[0], buffer, sizeof buffer);
      if (n <= 0) break;
      output.append(buffer, size_t(n));
      if (output.size() > (size_t(1) << 24)) break;
    }
    if (timed_out) kill(-pid, SIGKILL);  // the shell and whatever it started (a `sleep` it forked)
    close(from_child[0]);
    writer.join();
    int status = 0;
    waitpid(pid, &status, 0);
    if (timed_out) throw RewardFailed(fmt::format("--reward-cmd ran past {} s", timeout_));
    if (WIFSIGNALED(status))
      throw RewardFailed(
          fmt::format("--reward-cmd was killed by signal {} ({})", WTERMSIG(status), strsignal(WTERMSIG(status))));
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
      throw RewardFailed(
          fmt::format("--reward-cmd failed (exit status {})", WIFEXITED(status) ? WEXITSTATUS(status) : -1));
    std::vector<double> scores;
    std::istringstream lines(output);
    for (std::string line; std::getline(lines, line);) {
      char* end = nullptr;
      const double value = std::strtod(line.c_str(), &end);
      while (end && (*end == ' ' || *end == '\r' || *end == '\t')) ++end;
      if (line.empty() || end == line.c_str() || *end != '\0' || !std::isfinite(value))
        throw RewardFailed(fmt::format("--reward-cmd printed '{}', not a number", line.substr(0, 80)));
      scores.push_back(value);
    }
    if (scores.size() != batch.size())
      throw RewardFailed(fmt::format("--reward-cmd printed {} scores for {} completions", scores.size(), batch.size()));
    return scores;
  }

 private:
  std::string command_;
  double timeout_;
};

}  // namespace

std::string final_answer(const std::string& text) {
  // GSM8K's strict form first.
  if (const size_t mark = text.find("#### "); mark != std::string::npos) {
    const std::string n = number_at(text, mark + 5);
    if (!n.empty()) return normalized(n);
  }
  std::string last;
  for (size_t i = 0; i < text.size();) {
    const bool starts =
        is_number_char(text[i]) || (text[i] == '-' && i + 1 < text.size() && is_number_char(text[i + 1]));
    if (!starts) {
      ++i;
      continue;
    }
    const std::string n = number_at(text, i);
    size_t end = i + 1;
    while (end < text.size() && is_number_char(text[end])) ++end;
    if (!n.empty()) last = n;
    i = end;
  }
  return normalized(last);
}

std::unique_ptr<Reward> builtin_reward(const std::string& spec) {
  if (spec == "exact") return std::make_unique<ExactMatch>();
  if (spec == "format") return std::make_unique<FormatReward>();
  if (spec.rfind("regex:", 0) == 0) return std::make_unique<RegexReward>(spec.substr(6));
  fail("--reward {}: expected exact, format or regex:PATTERN", spec);
}

std::unique_ptr<Reward> external_reward(const std::string& command, double timeout_seconds) {
  return std::make_unique<ExternalReward>(command, timeout_seconds);
}

}  // namespace deepmoe::train
