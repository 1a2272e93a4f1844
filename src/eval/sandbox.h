// Runs an untrusted Python program (a model's HumanEval completion with its tests) in a child
// process. It is contained, not secured: namespaces cut the network and make the program the init
// of its own pid namespace (so everything it starts dies with it), rlimits bound CPU, memory, file
// size and descriptors, and a wall-clock deadline bounds the rest. Root's programs run as nobody
// (uid and gid 65534) where root may chown to it. Where namespaces are refused (no privilege, user
// namespaces disabled) it runs without them and says so; a subreaper still kills what it left.
#pragma once
#include <cstdint>
#include <string>

namespace deepmoe::eval {

struct SandboxLimits {
  double wall_seconds = 10;
  double cpu_seconds = 10;                  // RLIMIT_CPU (soft = hard: the kernel's SIGKILL)
  int64_t memory_bytes = int64_t(2) << 30;  // RLIMIT_AS
  int64_t file_bytes = int64_t(16) << 20;   // RLIMIT_FSIZE, the output file included
  int64_t open_files = 64;                  // RLIMIT_NOFILE
  int64_t processes = 256;                  // RLIMIT_NPROC (root's own processes ignore it)
  bool isolate = true;                      // false: never try namespaces (tests of the fallback)
};

enum class Outcome {
  Passed,    // exited 0
  Failed,    // exited nonzero (an exception, a failed assert, a limit's error)
  TimedOut,  // still running at the wall deadline, killed
  Signaled,  // killed by a signal (the CPU limit's SIGKILL, a crash)
};
const char* outcome_name(Outcome outcome);

struct SandboxResult {
  Outcome outcome = Outcome::Failed;
  int exit_code = 0;  // when Passed or Failed
  int signal = 0;     // when Signaled
  double seconds = 0;
  std::string output_tail;        // the last 4 KiB of stdout and stderr, interleaved as written
  bool network_isolated = false;  // ran in new network and pid namespaces
  bool passed() const { return outcome == Outcome::Passed; }
};

// Runs `python3 -s -B program.py` in a fresh temporary directory (its cwd and HOME, removed
// afterwards) with stdin from /dev/null and only PATH, HOME, LANG=C.UTF-8 and PYTHONHASHSEED=0 in
// its environment (not -I: it implies -E, which would ignore PYTHONHASHSEED). Returns when the program and
// everything it started are gone. Throws Error when the sandbox cannot be set up (no python3, no
// temporary directory, fork failed); the program's own failures are outcomes, never exceptions.
// Safe to call from several threads at once.
SandboxResult run_python(const std::string& program, const SandboxLimits& limits = {});

}  // namespace deepmoe::eval
