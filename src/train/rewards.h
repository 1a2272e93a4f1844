// GRPO's rewards: a score per completion. Built in: exact match of the final answer (GSM8K's
// "#### N", else the last number, against the prompt's answer; "," "$" and a trailing "." ignored),
// a regex the completion must match, and a format reward (a "<think>…</think>" block, then an
// answer). An external program scores a batch at once: JSON lines {"prompt", "completion",
// "answer"} on its stdin, one number per line on its stdout; a program that fails, hangs past its
// timeout (killed then with everything it started: it runs in a process group of its own) or
// prints anything else throws RewardFailed (the trainer skips that step).
#pragma once
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace deepmoe::train {

struct Completion {
  std::string prompt, completion, answer;
};

class RewardFailed : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Reward {
 public:
  virtual ~Reward() = default;
  virtual std::vector<double> score(const std::vector<Completion>& batch) = 0;
};

// The final answer as exact match reads it: "#### N" if present, else the last number, without
// "," and "$" and a trailing "."; empty when there is none.
std::string final_answer(const std::string& text);

// "exact", "format", "regex:PATTERN" (PCRE2); throws Error for anything else or a bad pattern.
std::unique_ptr<Reward> builtin_reward(const std::string& spec);
// `command` run by /bin/sh once per batch, killed after timeout_seconds.
std::unique_ptr<Reward> external_reward(const std::string& command, double timeout_seconds = 60);

}  // namespace deepmoe::train
