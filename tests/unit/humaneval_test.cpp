// HumanEval: pass@k against values worked out by hand, the program assembled as human-eval's
// execution.py assembles it, the JSONL's errors, and the sandbox that runs the programs: outcomes,
// limits, a wall deadline, no process left behind, no network, no temporary directory left.
// Sandbox tests that need namespaces skip where the host refuses them; twins with isolate = false
// cover the fallback and witness that the checks can fail (the same client connects there). The
// children a program starts are seen alive before it exits, so "gone afterwards" means something.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include "core/error.h"
#include "eval/humaneval.h"
#include "eval/sandbox.h"

namespace deepmoe::eval {
namespace {

namespace fs = std::filesystem;

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

TEST(PassAtK, MatchesHandWorkedValues) {
  EXPECT_DOUBLE_EQ(pass_at_k(5, 2, 1), 0.4);                  // c / n for k = 1
  EXPECT_DOUBLE_EQ(pass_at_k(10, 3, 5), 1.0 - 21.0 / 252.0);  // C(7,5) = 21, C(10,5) = 252
  EXPECT_DOUBLE_EQ(pass_at_k(10, 0, 5), 0.0);
  EXPECT_DOUBLE_EQ(pass_at_k(5, 3, 3), 1.0);  // 2 failures cannot fill 3 draws
  EXPECT_DOUBLE_EQ(pass_at_k(4, 4, 4), 1.0);
  EXPECT_NEAR(pass_at_k(200, 1, 100), 0.5, 1e-12);  // one pass in 200: drawn by half of the 100-draws
}

TEST(PassAtK, RejectsImpossibleCounts) {
  EXPECT_THROW(pass_at_k(5, 2, 6), Error);  // k > n
  EXPECT_THROW(pass_at_k(5, 6, 1), Error);  // c > n
  EXPECT_THROW(pass_at_k(5, -1, 1), Error);
  EXPECT_THROW(pass_at_k(-5, 0, 1), Error);
  EXPECT_THROW(pass_at_k(5, 2, 0), Error);
  EXPECT_THROW(pass_at_k(5, 2, -1), Error);
}

CodeTask add_task() {
  return {"Test/0", "def add(a, b):\n    \"\"\"Sum.\"\"\"\n", "    return a + b\n",
          "def check(candidate):\n    assert candidate(2, 3) == 5\n", "add"};
}

TEST(HumanEvalProgram, IsPromptCompletionTestAndCheck) {
  EXPECT_EQ(humaneval_program(add_task(), "    return a + b\n"),
            "def add(a, b):\n    \"\"\"Sum.\"\"\"\n    return a + b\n\n"
            "def check(candidate):\n    assert candidate(2, 3) == 5\n\ncheck(add)");
}

TEST(HumanEvalProgram, StopSequencesAreLmEvals) {
  EXPECT_EQ(humaneval_stop_sequences(), (std::vector<std::string>{"\nclass", "\ndef", "\n#", "\nif", "\nprint"}));
  EXPECT_EQ(kHumanEvalMaxGenTokens, 1024);
}

class HumanEvalJsonl : public ::testing::Test {
 protected:
  void SetUp() override { path_ = (fs::temp_directory_path() / fmt::format("humaneval-{}.jsonl", getpid())).string(); }
  void TearDown() override { fs::remove(path_); }
  void write(const std::string& text) { std::ofstream(path_, std::ios::binary) << text; }
  std::string error_of() {
    try {
      load_humaneval_jsonl(path_);
    } catch (const Error& e) {
      return e.what();
    }
    return "(no error)";
  }
  std::string path_;
};

constexpr const char* kLine = R"({"task_id": "T/0", "prompt": "def f():\n", "canonical_solution": "    return 1\n", )"
                              R"("test": "def check(c):\n    assert c() == 1\n", "entry_point": "f"})";

TEST_F(HumanEvalJsonl, LoadsTasksAndSkipsBlankLines) {
  write(std::string(kLine) + "\n\n  \r\n" + kLine + "\n");
  const auto tasks = load_humaneval_jsonl(path_);
  ASSERT_EQ(tasks.size(), 2u);
  EXPECT_EQ(tasks[1].task_id, "T/0");
  EXPECT_EQ(tasks[1].prompt, "def f():\n");
  EXPECT_EQ(tasks[1].canonical_solution, "    return 1\n");
  EXPECT_EQ(tasks[1].test, "def check(c):\n    assert c() == 1\n");
  EXPECT_EQ(tasks[1].entry_point, "f");
}

TEST_F(HumanEvalJsonl, ErrorsNameTheLineAndTheField) {
  write(std::string(kLine) + "\n" + R"({"task_id": "T/1", "prompt": "x", "test": "y", "entry_point": "f"})" + "\n");
  EXPECT_TRUE(contains(error_of(), path_ + ":2: 'canonical_solution' must be a string")) << error_of();
  write(std::string(kLine) + "\n\n" +
        R"({"task_id": 7, "prompt": "x", "canonical_solution": "", "test": "y", "entry_point": "f"})");
  EXPECT_TRUE(contains(error_of(), path_ + ":3: 'task_id' must be a string")) << error_of();
  write("[1, 2]\n");
  EXPECT_TRUE(contains(error_of(), path_ + ":1: not a JSON object")) << error_of();
  write("{\"task_id\": \n");
  EXPECT_TRUE(contains(error_of(), path_ + ":1: not a JSON object")) << error_of();
  write("\n\n");
  EXPECT_TRUE(contains(error_of(), path_ + ": no tasks")) << error_of();
  fs::remove(path_);
  EXPECT_TRUE(contains(error_of(), path_ + ": cannot open")) << error_of();
}

TEST(Sandbox, CanonicalSolutionPassesAndAWrongOneFails) {
  const CodeTask task = add_task();
  const SandboxResult right = run_python(humaneval_program(task, task.canonical_solution));
  EXPECT_TRUE(right.passed()) << outcome_name(right.outcome) << "\n" << right.output_tail;
  EXPECT_EQ(right.exit_code, 0);
  const SandboxResult wrong = run_python(humaneval_program(task, "    return a - b\n"));
  EXPECT_EQ(wrong.outcome, Outcome::Failed);
  EXPECT_EQ(wrong.exit_code, 1);
  EXPECT_TRUE(contains(wrong.output_tail, "AssertionError")) << wrong.output_tail;
}

TEST(Sandbox, ReportsExitCodesSignalsAndOutput) {
  const SandboxResult printed = run_python("import sys\nprint('out', flush=True)\nprint('err', file=sys.stderr)\n");
  EXPECT_TRUE(printed.passed());
  EXPECT_EQ(printed.output_tail, "out\nerr\n");
  const SandboxResult exited = run_python("import os\nos._exit(3)\n");
  EXPECT_EQ(exited.outcome, Outcome::Failed);
  EXPECT_EQ(exited.exit_code, 3);
  // A real fault: a pid namespace's init ignores signals it merely sends itself, not this one.
  const SandboxResult crashed = run_python("import ctypes\nctypes.string_at(0)\n");
  EXPECT_EQ(crashed.outcome, Outcome::Signaled) << outcome_name(crashed.outcome);
  EXPECT_EQ(crashed.signal, SIGSEGV);
}

TEST(Sandbox, KeepsTheLast4KiBOfOutput) {
  const SandboxResult r = run_python("print('x' * 10000)\nprint('END')\n");
  EXPECT_TRUE(r.passed());
  EXPECT_EQ(r.output_tail.size(), 4096u);
  EXPECT_TRUE(r.output_tail.ends_with("xxx\nEND\n"));
}

TEST(Sandbox, RunsWithAMinimalEnvironmentInItsOwnDirectory) {
  const std::string program =
      "import os, sys\n"
      "assert sorted(os.environ) == ['HOME', 'LANG', 'PATH', 'PYTHONHASHSEED'], sorted(os.environ)\n"
      "assert os.environ['HOME'] == os.getcwd(), (os.environ['HOME'], os.getcwd())\n"
      "assert os.environ['LANG'] == 'C.UTF-8'\n"
      "assert sys.stdin.read() == ''\n"
      "assert sorted(os.listdir('.')) == ['output.txt', 'program.py'], os.listdir('.')\n"
      "assert sys.dont_write_bytecode\n"
      "print(hash('deepmoe'))\n";
  const SandboxResult first = run_python(program), second = run_python(program);
  ASSERT_TRUE(first.passed()) << first.output_tail;
  ASSERT_TRUE(second.passed()) << second.output_tail;
  EXPECT_EQ(first.output_tail, second.output_tail);  // string hashing is seeded the same each run
}

TEST(Sandbox, AnEndlessLoopIsStoppedWithinTheDeadline) {
  SandboxLimits limits;
  limits.wall_seconds = 2;
  limits.cpu_seconds = 1;
  const auto start = std::chrono::steady_clock::now();
  const SandboxResult r = run_python("while True:\n    pass\n", limits);
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // The CPU limit's SIGKILL (1 s) or the wall deadline (2 s): whichever comes first, it fails.
  EXPECT_FALSE(r.passed());
  EXPECT_TRUE(r.outcome == Outcome::Signaled || r.outcome == Outcome::TimedOut) << outcome_name(r.outcome);
  EXPECT_LT(elapsed, 3.0);
  EXPECT_LT(r.seconds, 3.0);
}

TEST(Sandbox, ASleeperTimesOutAtTheWallDeadline) {
  SandboxLimits limits;
  limits.wall_seconds = 1;
  const SandboxResult r = run_python("import time\ntime.sleep(30)\n", limits);
  EXPECT_EQ(r.outcome, Outcome::TimedOut);
  EXPECT_GE(r.seconds, 1.0);
  EXPECT_LT(r.seconds, 2.0);
}

TEST(Sandbox, FileSizeAndMemoryLimitsMakeTheProgramFail) {
  const SandboxResult big = run_python(
      "with open('big.bin', 'wb') as f:\n"
      "    for _ in range(100):\n"
      "        f.write(b'\\0' * (1 << 20))\n");
  EXPECT_FALSE(big.passed());
  EXPECT_TRUE(contains(big.output_tail, "File too large") || big.signal == SIGXFSZ) << big.output_tail;
  const SandboxResult huge = run_python("x = bytearray(8 << 30)\nprint(len(x))\n");
  EXPECT_EQ(huge.outcome, Outcome::Failed);
  EXPECT_TRUE(contains(huge.output_tail, "MemoryError")) << huge.output_tail;
}

// A scratch directory the sandboxed programs write into (they run as this process's uid).
class SandboxScratch : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / fmt::format("humaneval-test-{}", getpid());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    fs::permissions(dir_, fs::perms::all);  // root's programs run as nobody
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

// Alive means running: a zombie whose reaper is the host's init (not us) runs nothing.
bool alive(pid_t pid) {
  if (kill(pid, 0) != 0) return errno != ESRCH;
  std::ifstream stat(fmt::format("/proc/{}/stat", pid));
  std::string line;
  std::getline(stat, line);
  const size_t paren = line.rfind(')');
  return !(paren != std::string::npos && paren + 2 < line.size() && line[paren + 2] == 'Z');
}

bool gone_within_200ms(pid_t pid) {
  for (int i = 0; i < 20 && alive(pid); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  return !alive(pid);
}

// Three children that sleep forever: one in the program's group, one in its own session, one a
// daemon (double fork, setsid). Each writes its pid as the host sees it (/proc is the host's); the
// program exits 0 once the test, having seen them all alive, writes "go".
std::string forking_program(const fs::path& dir) {
  return fmt::format(
      "import os, time\n"
      "d = '{}'\n"
      "names = ['plain', 'session', 'daemon']\n"
      "for name in names:\n"
      "    if os.fork() == 0:\n"
      "        if name != 'plain':\n"
      "            os.setsid()\n"
      "        if name == 'daemon' and os.fork() != 0:\n"
      "            os._exit(0)\n"
      "        with open(f'{{d}}/{{name}}.tmp', 'w') as f:\n"
      "            f.write(os.readlink('/proc/self'))\n"
      "        os.rename(f'{{d}}/{{name}}.tmp', f'{{d}}/{{name}}.pid')\n"
      "        while True:\n"
      "            time.sleep(1)\n"
      "for _ in range(500):\n"
      "    if os.path.exists(f'{{d}}/go'):\n"
      "        raise SystemExit(0)\n"
      "    time.sleep(0.01)\n"
      "raise SystemExit('no go from the test')\n",
      dir.string());
}

pid_t read_pid(const fs::path& file) {
  std::ifstream in(file);
  pid_t pid = 0;
  in >> pid;
  return pid;
}

// Runs forking_program, checks that its three children run while it does (the witness that the
// pids are right and `alive` sees them), lets it exit, and returns the result and the pids.
// Whatever still runs when the test ends is killed, so that a failing test leaves nothing behind.
struct Children {
  SandboxResult result;
  pid_t pids[3] = {0, 0, 0};  // plain, session, daemon
  Children(const fs::path& dir, const SandboxLimits& limits) {
    std::thread run([&] { result = run_python(forking_program(dir), limits); });
    const char* names[3] = {"plain.pid", "session.pid", "daemon.pid"};
    for (int i = 0; i < 3; ++i) {
      for (int wait = 0; wait < 400 && !fs::exists(dir / names[i]); ++wait)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      pids[i] = read_pid(dir / names[i]);
      EXPECT_TRUE(pids[i] > 1 && alive(pids[i])) << names[i] << " " << pids[i];
    }
    std::ofstream(dir / "go") << "go";
    run.join();
  }
  ~Children() {
    for (pid_t pid : pids)
      if (pid > 1 && alive(pid)) kill(pid, SIGKILL);
  }
};

TEST_F(SandboxScratch, NothingTheProgramStartedOutlivesIt) {
  const Children c(dir_, SandboxLimits{});
  ASSERT_TRUE(c.result.passed()) << c.result.output_tail;
  EXPECT_TRUE(gone_within_200ms(c.pids[0])) << c.pids[0];
  if (!c.result.network_isolated && !fs::exists("/proc/thread-self/children"))
    GTEST_SKIP() << "neither a pid namespace nor a subreaper's child list here: session leaders may survive";
  for (pid_t pid : c.pids) EXPECT_TRUE(gone_within_200ms(pid)) << pid;
}

// Without namespaces the intermediate child, a subreaper, kills the orphans (the pid namespace
// would otherwise have been what catches the session leaders).
TEST_F(SandboxScratch, NothingOutlivesItWithoutNamespacesEither) {
  if (!fs::exists("/proc/thread-self/children")) GTEST_SKIP() << "no /proc/<pid>/task/<tid>/children here";
  SandboxLimits limits;
  limits.isolate = false;
  const Children c(dir_, limits);
  ASSERT_TRUE(c.result.passed()) << c.result.output_tail;
  EXPECT_FALSE(c.result.network_isolated);
  for (pid_t pid : c.pids) EXPECT_TRUE(gone_within_200ms(pid)) << pid;
}

// A TCP listener on 127.0.0.1 and a program that exits 0 only if it connects to it.
struct Listener {
  int fd = -1;
  int port = 0;
  Listener() {
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in address = {};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t size = sizeof address;
    if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&address), size) != 0 || listen(fd, 16) != 0 ||
        getsockname(fd, reinterpret_cast<sockaddr*>(&address), &size) != 0)
      throw Error("cannot listen on 127.0.0.1");
    port = ntohs(address.sin_port);
  }
  ~Listener() { close(fd); }
  std::string client() const {
    return fmt::format("import socket\nsocket.create_connection(('127.0.0.1', {}), timeout=3).close()\n", port);
  }
};

TEST(Sandbox, TheNetworkIsCut) {
  const Listener listener;
  const SandboxResult r = run_python(listener.client());
  if (!r.network_isolated) GTEST_SKIP() << "no network namespace here";
  EXPECT_FALSE(r.passed()) << r.output_tail;
  EXPECT_TRUE(contains(r.output_tail, "OSError") || contains(r.output_tail, "unreachable")) << r.output_tail;
}

TEST(Sandbox, WithoutNamespacesTheSameProgramConnects) {
  const Listener listener;
  SandboxLimits limits;
  limits.isolate = false;
  const SandboxResult r = run_python(listener.client(), limits);
  EXPECT_TRUE(r.passed()) << r.output_tail;  // the witness that the client above can connect
  EXPECT_FALSE(r.network_isolated);
}

TEST_F(SandboxScratch, TheTemporaryDirectoryIsRemovedWithoutFollowingLinks) {
  std::ofstream(dir_ / "keep.txt") << "keep";
  // It also leaves a directory without permissions and a link out to a directory of ours.
  const SandboxResult r =
      run_python(fmt::format("import os\nprint(os.getcwd())\nos.makedirs('a/b')\nopen('a/b/f', 'w').close()\n"
                             "os.chmod('a/b', 0)\nos.chmod('a', 0)\nos.symlink('{}', 'out')\n",
                             dir_.string()));
  ASSERT_TRUE(r.passed()) << r.output_tail;
  const std::string cwd = r.output_tail.substr(0, r.output_tail.find('\n'));
  EXPECT_TRUE(cwd.starts_with((fs::temp_directory_path() / "deepmoe-sandbox-").string())) << cwd;
  EXPECT_FALSE(fs::exists(fs::symlink_status(cwd))) << cwd;
  EXPECT_TRUE(fs::exists(dir_ / "keep.txt"));
}

TEST(Sandbox, RootsProgramRunsAsNobody) {
  if (geteuid() != 0) GTEST_SKIP() << "not root";
  const fs::path mine = fs::temp_directory_path() / fmt::format("humaneval-root-{}", getpid());
  fs::create_directories(mine);
  fs::permissions(mine, fs::perms::owner_all | fs::perms::group_read | fs::perms::others_read | fs::perms::group_exec |
                            fs::perms::others_exec);
  if (chown(mine.c_str(), 65534, 65534) != 0) {
    fs::remove_all(mine);
    GTEST_SKIP() << "root here cannot chown to 65534 (no CAP_CHOWN, or 65534 unmapped): its programs keep uid 0";
  }
  if (chown(mine.c_str(), 0, 0) != 0) FAIL() << "cannot give " << mine << " back to root";
  const SandboxResult r = run_python(
      fmt::format("import os\nassert (os.getuid(), os.getgid(), os.getgroups()) == (65534, 65534, []), os.getuid()\n"
                  "try:\n    open('{}/x', 'w')\nexcept PermissionError:\n    print('refused')\n",
                  mine.string()));
  EXPECT_TRUE(r.passed()) << r.output_tail;
  EXPECT_EQ(r.output_tail, "refused\n");
  EXPECT_FALSE(fs::exists(mine / "x"));
  fs::remove_all(mine);
}

TEST(Sandbox, SetupErrorsThrow) {
  SandboxLimits limits;
  limits.wall_seconds = 0;
  EXPECT_THROW(run_python("pass\n", limits), Error);
  const char* old = std::getenv("TMPDIR");
  const std::string saved = old ? old : "";
  setenv("TMPDIR", "/nonexistent-deepmoe-dir", 1);
  try {
    run_python("pass\n");
    ADD_FAILURE() << "ran without a temporary directory";
  } catch (const Error& e) {
    EXPECT_TRUE(contains(e.what(), "/nonexistent-deepmoe-dir/deepmoe-sandbox-")) << e.what();
  }
  if (old) setenv("TMPDIR", saved.c_str(), 1);
  else unsetenv("TMPDIR");
}

TEST(Sandbox, RunsFromSeveralThreadsAtOnce) {
  std::vector<SandboxResult> results(4);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < results.size(); ++i)
    threads.emplace_back([&, i] { results[i] = run_python(fmt::format("print({})\n", i)); });
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < results.size(); ++i) {
    EXPECT_TRUE(results[i].passed()) << results[i].output_tail;
    EXPECT_EQ(results[i].output_tail, fmt::format("{}\n", i));
  }
}

}  // namespace
}  // namespace deepmoe::eval
