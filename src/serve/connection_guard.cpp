#include "serve/connection_guard.h"

#include <dirent.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <unordered_set>

namespace deepmoe {

namespace {

// "address port" of a socket's peer, as httplib reports it (numeric host, port), or nullopt.
std::optional<std::string> peer_key(int fd) {
  sockaddr_storage address{};
  socklen_t size = sizeof(address);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&address), &size) != 0) return std::nullopt;
  char host[NI_MAXHOST], port[NI_MAXSERV];
  if (getnameinfo(reinterpret_cast<sockaddr*>(&address), size, host, sizeof(host), port, sizeof(port),
                  NI_NUMERICHOST | NI_NUMERICSERV) != 0)
    return std::nullopt;
  return std::string(host) + " " + port;
}

// This process's descriptors that are connections accepted on `port`, with their peers.
std::vector<std::pair<int, std::string>> connections_on(int port) {
  std::vector<std::pair<int, std::string>> out;
  DIR* directory = opendir("/proc/self/fd");
  if (!directory) return out;
  while (const dirent* entry = readdir(directory)) {
    char* end = nullptr;
    const long fd = std::strtol(entry->d_name, &end, 10);
    if (end == entry->d_name || *end != '\0' || fd == dirfd(directory)) continue;
    bool listening = false;
    if (tcp_local_port(int(fd), &listening) != port || listening) continue;
    if (auto key = peer_key(int(fd))) out.emplace_back(int(fd), std::move(*key));
  }
  closedir(directory);
  return out;
}

std::string key_of(const std::string& address, int port) { return address + " " + std::to_string(port); }

}  // namespace

int tcp_local_port(int fd, bool* listening) {
  sockaddr_storage address{};
  socklen_t size = sizeof(address);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&address), &size) != 0) return -1;
  int port = -1;
  if (address.ss_family == AF_INET) port = ntohs(reinterpret_cast<sockaddr_in*>(&address)->sin_port);
  if (address.ss_family == AF_INET6) port = ntohs(reinterpret_cast<sockaddr_in6*>(&address)->sin6_port);
  int accepting = 0;
  socklen_t option_size = sizeof(accepting);
  if (port < 0 || getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &option_size) != 0) return -1;
  *listening = accepting != 0;
  return port;
}

ConnectionGuard::ConnectionGuard(std::chrono::milliseconds read_timeout, size_t max_connections)
    : read_timeout_(read_timeout), max_connections_(max_connections) {}

ConnectionGuard::~ConnectionGuard() { stop(); }

void ConnectionGuard::start(int port) {
  stop();
  stopping_ = false;
  thread_ = std::thread([this, port] { watch(port); });
}

void ConnectionGuard::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::shared_ptr<void> ConnectionGuard::busy(const std::string& address, int port) {
  const std::string key = key_of(address, port);
  {
    std::lock_guard lock(mutex_);
    ++peers_[key].busy;
  }
  return std::shared_ptr<void>(nullptr, [this, key](void*) {
    std::lock_guard lock(mutex_);
    auto it = peers_.find(key);
    if (it == peers_.end()) return;
    --it->second.busy;
    it->second.active = Clock::now();
  });
}

void ConnectionGuard::touch(const std::string& address, int port) {
  std::lock_guard lock(mutex_);
  peers_[key_of(address, port)].active = Clock::now();
}

void ConnectionGuard::watch(int port) {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    lock.unlock();
    scan(port);
    lock.lock();
    wake_.wait_for(lock, std::chrono::milliseconds(100), [this] { return stopping_; });
  }
}

void ConnectionGuard::scan(int port) {
  const auto connections = connections_on(port);  // system calls, outside the lock
  const auto now = Clock::now();
  std::vector<std::pair<int, std::string>> to_cut;
  {
    std::lock_guard lock(mutex_);
    std::unordered_map<int, std::string> seen;
    std::vector<std::pair<Clock::time_point, size_t>> waiting;  // (active, index) of connections not busy
    for (size_t i = 0; i < connections.size(); ++i) {
      const auto& [fd, key] = connections[i];
      auto known = sockets_.find(fd);
      auto [peer, added] = peers_.try_emplace(key);
      if (added || known == sockets_.end() || known->second != key) {
        if (peer->second.busy == 0) peer->second.active = now;  // a new connection
      }
      seen.emplace(fd, key);
      if (peer->second.busy > 0) continue;
      if (now - peer->second.active > read_timeout_) to_cut.push_back(connections[i]);
      else waiting.emplace_back(peer->second.active, i);
    }
    // Over the cap: the connections that have waited longest for a request go first.
    const size_t open = connections.size() - to_cut.size();
    if (open > max_connections_) {
      std::sort(waiting.begin(), waiting.end());
      for (size_t j = 0; j < std::min(open - max_connections_, waiting.size()); ++j)
        to_cut.push_back(connections[waiting[j].second]);
    }
    std::unordered_set<std::string> open_keys;
    for (const auto& connection : connections) open_keys.insert(connection.second);
    for (auto it = peers_.begin(); it != peers_.end();)  // forget closed connections
      it = (open_keys.count(it->first) || it->second.busy > 0) ? std::next(it) : peers_.erase(it);
    sockets_ = std::move(seen);
  }
  // The descriptor may have been closed and reused since the scan: cut it only if it still
  // belongs to the same peer. shutdown() wakes the thread blocked reading it; httplib closes it.
  for (const auto& [fd, key] : to_cut)
    if (peer_key(fd) == key) ::shutdown(fd, SHUT_RDWR);
}

ConnectionThreads::~ConnectionThreads() { shutdown(); }

void ConnectionThreads::enqueue(std::function<void()> job) {
  std::lock_guard lock(mutex_);
  jobs_.push_back(std::move(job));
  if (idle_ < jobs_.size() && threads_.size() < max_threads_) threads_.emplace_back([this] { work(); });
  ready_.notify_one();
}

void ConnectionThreads::shutdown() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  ready_.notify_all();
  for (std::thread& thread : threads_)
    if (thread.joinable()) thread.join();
  threads_.clear();
}

void ConnectionThreads::work() {
  std::unique_lock lock(mutex_);
  for (;;) {
    ++idle_;
    ready_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
    --idle_;
    if (jobs_.empty()) return;  // stopping, nothing left
    std::function<void()> job = std::move(jobs_.front());
    jobs_.pop_front();
    lock.unlock();
    job();
    lock.lock();
  }
}

}  // namespace deepmoe
