// Keeps slow and idle clients from holding the server's connections (slowloris). cpp-httplib
// serves each connection on a thread of its own and only bounds each read (not a request's
// whole header or body), so a few hundred sockets that trickle bytes would hold every thread.
// The guard watches this server's sockets and cuts (shutdown) a connection that has not delivered
// a complete request within `read_timeout` of connecting or of its previous response, and sheds
// the longest-waiting such connections when more than `max_connections` are open. A connection
// whose request is being answered (a handler holds its Busy token) is never cut.
// ConnectionThreads is the matching task queue: threads grow with the connections, up to the cap.
#pragma once
#include <httplib.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace deepmoe {

// The local port of TCP socket `fd` and whether it listens; -1 when `fd` is no TCP socket.
// (cpp-httplib keeps its descriptors to itself: the server finds them by port.)
int tcp_local_port(int fd, bool* listening);

class ConnectionGuard {
 public:
  using Clock = std::chrono::steady_clock;
  ConnectionGuard(std::chrono::milliseconds read_timeout, size_t max_connections);
  ~ConnectionGuard();
  // Starts watching the connections accepted on `port` (a thread; scans every 100 ms).
  void start(int port);
  void stop();

  // The client `address`:`port` has delivered a request: its connection is not cut while the
  // returned token lives (the answer may stream for minutes).
  std::shared_ptr<void> busy(const std::string& address, int port);
  // A request's headers arrived: the client has another read_timeout for the body.
  void touch(const std::string& address, int port);

 private:
  struct Peer {
    int busy = 0;
    Clock::time_point active;  // last connect, request headers or finished answer
  };
  void watch(int port);
  void scan(int port);

  const std::chrono::milliseconds read_timeout_;
  const size_t max_connections_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::map<std::string, Peer> peers_;             // by "address port"
  std::unordered_map<int, std::string> sockets_;  // descriptor -> peer key, as last seen
  std::thread thread_;
};

// httplib's task queue for connections: a thread per connection in flight, started when none is
// idle, up to `max_threads`; beyond that connections wait (and the guard sheds the idle ones).
class ConnectionThreads : public httplib::TaskQueue {
 public:
  explicit ConnectionThreads(size_t max_threads) : max_threads_(max_threads) {}
  ~ConnectionThreads() override;
  void enqueue(std::function<void()> job) override;
  void shutdown() override;

 private:
  void work();

  const size_t max_threads_;
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<std::function<void()>> jobs_;
  std::vector<std::thread> threads_;
  size_t idle_ = 0;
  bool stopping_ = false;
};

}  // namespace deepmoe
