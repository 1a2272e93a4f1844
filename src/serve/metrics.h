// The server's counters and latency histograms, rendered in Prometheus' text format together
// with the engine's gauges (running and queued requests, KV blocks, prefix cache, expert load).
#pragma once
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "serve/engine.h"

namespace deepmoe {

class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void observe(double value);
  // "name_bucket{le=...} n" lines, name_sum and name_count.
  void render(std::string& out, const std::string& name) const;

 private:
  std::vector<double> bounds_;
  std::vector<int64_t> counts_;  // per bucket, not cumulative
  double sum_ = 0.0;
  int64_t count_ = 0;
};

class Metrics {
 public:
  Metrics();
  void count_request(const std::string& endpoint, int status);
  void observe_time_to_first_token(double seconds);
  void observe_inter_token(double seconds);
  void observe_request(double seconds, int64_t prompt_tokens, int64_t generated_tokens);
  std::string render(const EngineStats& engine) const;

 private:
  mutable std::mutex mutex_;
  std::map<std::pair<std::string, int>, int64_t> requests_;
  Histogram time_to_first_token_, inter_token_, request_latency_;
  int64_t prompt_tokens_ = 0, generated_tokens_ = 0;
};

}  // namespace deepmoe
