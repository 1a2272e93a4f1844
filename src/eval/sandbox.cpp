#include "eval/sandbox.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>
#include <vector>

#include "core/error.h"

namespace deepmoe::eval {

namespace {

namespace fs = std::filesystem;

constexpr size_t kTailBytes = 4096;
constexpr int kSetupFailed = 126;  // the child's own exit code when it could not start the program
constexpr int kNobody = 65534;     // root's programs run as this uid and gid

// A descriptor closed on scope exit.
struct Fd {
  int fd = -1;
  explicit Fd(int f = -1) : fd(f) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }
  void reset() {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
};

// Everything the child uses, built before fork: the caller is multi-threaded, so between fork and
// exec the child may make only async-signal-safe calls (no allocation, no locks, no fmt).
struct Plan {
  pid_t parent = 0;
  const char* dir = nullptr;
  std::vector<char*> argv, envp;
  std::string uid_map, gid_map;
  int stdin_fd = -1, output_fd = -1, report_fd = -1;
  unsigned max_fd = 0;  // for closing descriptors one by one where close_range is missing
  bool isolate = true;
  int run_as = -1;  // a uid (and gid) to drop to before exec, or -1
  struct Limit {
    int resource;
    rlim_t value;
  };
  std::vector<Limit> limits;
};

size_t length(const char* s) {
  size_t n = 0;
  while (s[n]) ++n;
  return n;
}

// Writes "sandbox: <what>: errno <n>" to the program's stderr (its output file) and exits.
[[noreturn]] void die(const char* what) {
  const int error = errno;
  char digits[16];
  size_t n = sizeof digits;
  int e = error;
  do {
    digits[--n] = char('0' + e % 10);
    e /= 10;
  } while (e > 0 && n > 0);
  [[maybe_unused]] ssize_t ignored = ::write(2, "sandbox: ", 9);
  ignored = ::write(2, what, length(what));
  ignored = ::write(2, ": errno ", 8);
  ignored = ::write(2, digits + n, sizeof digits - n);
  ignored = ::write(2, "\n", 1);
  _exit(kSetupFailed);
}

bool write_file(const char* path, const std::string& text) {
  const int fd = ::open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  const bool ok = ::write(fd, text.data(), text.size()) == ssize_t(text.size());
  ::close(fd);
  return ok;
}

// The second fork, inside the child: _Fork runs no atfork handlers, which the libraries of a
// multi-threaded parent may have registered and which are not safe here.
pid_t fork_in_child() {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
  return _Fork();
#else
  return fork();
#endif
}

void close_from(int first, unsigned max_fd) {
#ifdef SYS_close_range
  if (syscall(SYS_close_range, unsigned(first), ~0u, 0u) == 0) return;
#endif
  for (unsigned fd = unsigned(first); fd < max_fd; ++fd) ::close(int(fd));
}

// Without a pid namespace the program's orphans (daemons, setsid'd children) come to the
// intermediate child, a child subreaper: it kills them, and the orphans each death makes in turn,
// until it has no child left. Each pid listed is its own unreaped child, so never a reused one.
// (In a pid namespace the exit of its init, the program, has already killed them all.)
void reap_orphans() {
  for (;;) {
    const int fd = ::open("/proc/thread-self/children", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;  // a kernel without CONFIG_PROC_CHILDREN: leave them to init, never wait on them
    char buffer[512];
    pid_t pid = 0;
    for (ssize_t n; (n = ::read(fd, buffer, sizeof buffer)) > 0;)
      for (ssize_t i = 0; i < n; ++i) {
        if (buffer[i] >= '0' && buffer[i] <= '9') {
          pid = pid * 10 + (buffer[i] - '0');
          continue;
        }
        if (pid > 0) kill(pid, SIGKILL);
        pid = 0;
      }
    if (pid > 0) kill(pid, SIGKILL);
    ::close(fd);
    if (waitpid(-1, nullptr, 0) < 0 && errno == ECHILD) return;
  }
}

// The intermediate child: it enters the namespaces, starts the program as pid 1 of the new pid
// namespace (when pid 1 exits the kernel kills whatever it left there, daemons included), waits for
// it and ends the way it ended.
[[noreturn]] void intermediate(const Plan& plan) {
  // Handlers, ignored signals and the signal mask are the parent thread's; the program gets defaults.
  struct sigaction defaults = {};
  defaults.sa_handler = SIG_DFL;
  sigemptyset(&defaults.sa_mask);
  for (int sig = 1; sig < NSIG; ++sig) sigaction(sig, &defaults, nullptr);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);

  setpgid(0, 0);  // the parent kills the whole group at the end
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) die("prctl");
  if (getppid() != plan.parent) _exit(kSetupFailed);  // the caller died before the prctl
  if (dup2(plan.stdin_fd, 0) < 0 || dup2(plan.output_fd, 1) < 0 || dup2(plan.output_fd, 2) < 0) die("dup2");
  if (chdir(plan.dir) != 0) die("chdir");

  // Root (with CAP_SYS_ADMIN) makes network and pid namespaces directly.
  char isolated = '0';
  if (plan.isolate && unshare(CLONE_NEWNET | CLONE_NEWPID) == 0) isolated = '1';
  // Root's program runs as nobody, and from here on, so that a user namespace made next is nobody's.
  // Raw syscalls: glibc's would signal the parent's other threads, which do not exist here.
  if (plan.run_as >= 0) {
    if (syscall(SYS_setgroups, 0, nullptr) != 0 || syscall(SYS_setresgid, plan.run_as, plan.run_as, plan.run_as) != 0 ||
        syscall(SYS_setresuid, plan.run_as, plan.run_as, plan.run_as) != 0)
      die("cannot change to uid and gid 65534");
    // The change cleared the parent-death signal, and made our /proc files (uid_map) root's.
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || prctl(PR_SET_DUMPABLE, 1) != 0) die("prctl");
    if (getppid() != plan.parent) _exit(kSetupFailed);
  }
  // Others make them inside a new user namespace, in which our uid and gid map to themselves (so
  // the temporary directory stays ours, and the program, not root there, has no capabilities).
  if (plan.isolate && isolated == '0' && unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWPID) == 0) {
    if (!write_file("/proc/self/setgroups", "deny") || !write_file("/proc/self/uid_map", plan.uid_map) ||
        !write_file("/proc/self/gid_map", plan.gid_map))
      die("cannot map the uid and gid into the new user namespace");
    isolated = '1';
  }
  [[maybe_unused]] const ssize_t reported = ::write(plan.report_fd, &isolated, 1);
  close_from(3, plan.max_fd);  // the parent's descriptors (sockets, files) are not the program's

  const rlimit no_core = {0, 0};
  setrlimit(RLIMIT_CORE, &no_core);
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  const pid_t self = getpid();
  const pid_t program = fork_in_child();
  if (program < 0) die("fork");
  if (program == 0) {
    for (const auto& limit : plan.limits) {
      const rlimit value = {limit.value, limit.value};
      if (setrlimit(limit.resource, &value) != 0) die("setrlimit");
    }
    // In a new pid namespace the parent is outside it and getppid() is 0.
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) die("prctl");
    if (getppid() != self && getppid() != 0) _exit(kSetupFailed);
    execve(plan.argv[0], plan.argv.data(), plan.envp.data());
    die("cannot run python3");
  }
  int status = 0;
  while (waitpid(program, &status, 0) < 0)
    if (errno != EINTR) die("waitpid");
  reap_orphans();
  if (WIFEXITED(status)) _exit(WEXITSTATUS(status));
  // Dispositions are the defaults and cores are off, so this ends us by the program's signal.
  kill(self, WTERMSIG(status));
  _exit(128 + WTERMSIG(status));
}

std::string find_python() {
  if (access("/usr/bin/python3", X_OK) == 0) return "/usr/bin/python3";
  const char* path = std::getenv("PATH");
  std::string dirs = path ? path : "";
  for (size_t start = 0; start <= dirs.size();) {
    const size_t end = std::min(dirs.find(':', start), dirs.size());
    const std::string candidate = (end > start ? dirs.substr(start, end - start) : ".") + "/python3";
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
    start = end + 1;
  }
  return "";
}

// Removes the temporary directory without following links. The program may have left directories
// it took its own permissions from, which only root could otherwise empty.
void remove_tree(const std::string& dir) noexcept {
  std::error_code ec;
  fs::permissions(dir, fs::perms::owner_all, fs::perm_options::add, ec);
  for (auto it = fs::recursive_directory_iterator(dir, fs::directory_options::skip_permission_denied, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec))
    if (it->symlink_status(ec).type() == fs::file_type::directory)
      fs::permissions(it->path(), fs::perms::owner_all, fs::perm_options::add, ec);
  fs::remove_all(dir, ec);
}

struct TemporaryDirectory {
  std::string path;
  ~TemporaryDirectory() {
    if (!path.empty()) remove_tree(path);
  }
};

// Kills and reaps the child if run_python leaves early; the group outlives a zombie leader, so
// killing it before the reap cannot hit a reused process-group id.
struct ChildGuard {
  pid_t pid = -1;
  ~ChildGuard() {
    if (pid <= 0) return;
    kill(-pid, SIGKILL);
    while (waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
  }
};

rlim_t clamp_to_hard(int resource, int64_t value) {
  rlimit current = {};
  getrlimit(resource, &current);
  const rlim_t wanted = rlim_t(std::max<int64_t>(value, 0));
  return current.rlim_max == RLIM_INFINITY ? wanted : std::min(wanted, current.rlim_max);
}

// From the descriptor the program wrote through, not the path: it may have put a link there.
std::string read_tail(int fd) {
  struct stat info = {};
  if (fstat(fd, &info) != 0) return "";
  const off_t start = std::max<off_t>(0, info.st_size - off_t(kTailBytes));
  std::string tail(size_t(info.st_size - start), '\0');
  const ssize_t got = pread(fd, tail.data(), tail.size(), start);
  tail.resize(size_t(std::max<ssize_t>(got, 0)));
  return tail;
}

}  // namespace

const char* outcome_name(Outcome outcome) {
  switch (outcome) {
    case Outcome::Passed: return "passed";
    case Outcome::Failed: return "failed";
    case Outcome::TimedOut: return "timed out";
    case Outcome::Signaled: return "signaled";
  }
  return "unknown";
}

SandboxResult run_python(const std::string& program, const SandboxLimits& limits) {
  if (!(limits.wall_seconds > 0) || !(limits.cpu_seconds > 0) || limits.memory_bytes <= 0 || limits.file_bytes <= 0 ||
      limits.open_files <= 0 || limits.processes <= 0)
    fail("sandbox: every limit must be positive");
  static const std::string python = find_python();
  if (python.empty()) fail("sandbox: no python3 (looked for /usr/bin/python3, then in PATH)");

  const char* tmpdir = std::getenv("TMPDIR");
  std::string pattern = std::string(tmpdir && *tmpdir ? tmpdir : "/tmp") + "/deepmoe-sandbox-XXXXXX";
  if (!mkdtemp(pattern.data()))
    fail("sandbox: cannot make a temporary directory {}: {}", pattern, std::strerror(errno));
  TemporaryDirectory dir{fs::absolute(pattern).string()};  // HOME, and TMPDIR may be relative
  {
    std::ofstream out(dir.path + "/program.py", std::ios::binary);
    out << program;
    if (!out.flush()) fail("sandbox: cannot write {}/program.py", dir.path);
  }
  // O_CLOEXEC: other threads may fork too, and must not inherit these.
  Fd stdin_fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  const std::string output_path = dir.path + "/output.txt";
  Fd output_fd(::open(output_path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (stdin_fd.fd < 0 || output_fd.fd < 0)
    fail("sandbox: cannot open /dev/null or {}: {}", output_path, std::strerror(errno));
  // Non-blocking: a sibling call's child may briefly hold a copy of the write end, so no EOF wait.
  int report[2];
  if (pipe2(report, O_CLOEXEC | O_NONBLOCK) != 0) fail("sandbox: pipe: {}", std::strerror(errno));
  Fd report_read(report[0]), report_write(report[1]);

  // Not -I: it implies -E, which would drop PYTHONHASHSEED; the environment is ours alone anyway.
  std::vector<std::string> args = {python, "-s", "-B", "program.py"};
  std::string bin = fs::path(python).parent_path().string();
  std::vector<std::string> env = {"PATH=" + (bin == "/usr/bin" ? "" : bin + ":") + "/usr/local/bin:/usr/bin:/bin",
                                  "HOME=" + dir.path, "LANG=C.UTF-8", "PYTHONHASHSEED=0"};
  Plan plan;
  plan.parent = getpid();
  plan.dir = dir.path.c_str();
  for (auto& a : args) plan.argv.push_back(a.data());
  plan.argv.push_back(nullptr);
  for (auto& e : env) plan.envp.push_back(e.data());
  plan.envp.push_back(nullptr);
  plan.stdin_fd = stdin_fd.fd;
  plan.output_fd = output_fd.fd;
  plan.report_fd = report_write.fd;
  plan.max_fd = unsigned(std::min<rlim_t>(clamp_to_hard(RLIMIT_NOFILE, int64_t(1) << 20), rlim_t(1) << 20));
  plan.isolate = limits.isolate;
  // Namespaces keep root's program off the network and out of the process table, not off the
  // filesystem: it runs as nobody, in a directory made nobody's.
  if (geteuid() == 0 && chown(dir.path.c_str(), kNobody, kNobody) == 0 &&
      chown((dir.path + "/program.py").c_str(), kNobody, kNobody) == 0)
    plan.run_as = kNobody;
  plan.uid_map = fmt::format("{0} {0} 1\n", plan.run_as >= 0 ? uid_t(plan.run_as) : geteuid());
  plan.gid_map = fmt::format("{0} {0} 1\n", plan.run_as >= 0 ? gid_t(plan.run_as) : getegid());
  plan.limits = {{RLIMIT_CPU, clamp_to_hard(RLIMIT_CPU, int64_t(std::ceil(limits.cpu_seconds)))},
                 {RLIMIT_AS, clamp_to_hard(RLIMIT_AS, limits.memory_bytes)},
                 {RLIMIT_FSIZE, clamp_to_hard(RLIMIT_FSIZE, limits.file_bytes)},
                 {RLIMIT_NOFILE, clamp_to_hard(RLIMIT_NOFILE, limits.open_files)},
                 {RLIMIT_NPROC, clamp_to_hard(RLIMIT_NPROC, limits.processes)},
                 {RLIMIT_CORE, 0}};

  const auto start = std::chrono::steady_clock::now();
  const auto deadline = start + std::chrono::duration<double>(limits.wall_seconds);
  const pid_t pid = fork();
  if (pid < 0) fail("sandbox: fork: {}", std::strerror(errno));
  if (pid == 0) intermediate(plan);
  ChildGuard guard{pid};
  setpgid(pid, pid);  // as the child does: whichever runs first, the group exists before any kill
  report_write.reset();

  // Poll for the exit without reaping (WNOWAIT): the zombie keeps the process group alive for the
  // final kill, the backstop for what the program left behind when the child could not reap it
  // (killed at the deadline, without namespaces).
  bool timed_out = false;
  auto pause = std::chrono::microseconds(500);
  for (;;) {
    siginfo_t info = {};
    const int rc = waitid(P_PID, id_t(pid), &info, WEXITED | WNOHANG | WNOWAIT);
    if (rc == 0 && info.si_pid == pid) break;
    if (rc != 0 && errno != EINTR)
      fail("sandbox: waitid: {} (is SIGCHLD ignored, so that children reap themselves?)", std::strerror(errno));
    if (!timed_out && std::chrono::steady_clock::now() >= deadline) {
      kill(-pid, SIGKILL);
      timed_out = true;
    }
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::microseconds(10000));
  }
  kill(-pid, SIGKILL);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) fail("sandbox: waitpid: {}", std::strerror(errno));
  guard.pid = -1;

  SandboxResult r;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  char isolated = '0';
  r.network_isolated = ::read(report_read.fd, &isolated, 1) == 1 && isolated == '1';
  if (timed_out) {
    r.outcome = Outcome::TimedOut;
  } else if (WIFEXITED(status)) {
    r.exit_code = WEXITSTATUS(status);
    r.outcome = r.exit_code == 0 ? Outcome::Passed : Outcome::Failed;
  } else {
    r.signal = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
    r.outcome = Outcome::Signaled;
  }
  r.output_tail = read_tail(output_fd.fd);
  return r;
}

}  // namespace deepmoe::eval
