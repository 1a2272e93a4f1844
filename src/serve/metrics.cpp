#include "serve/metrics.h"

#include <fmt/format.h>

#include <algorithm>

namespace deepmoe {

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double value) {
  const size_t bucket = size_t(std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin());
  ++counts_[bucket];
  sum_ += value;
  ++count_;
}

void Histogram::render(std::string& out, const std::string& name) const {
  int64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, bounds_[i], cumulative);
  }
  out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n{}_sum {}\n{}_count {}\n", name, count_, name, sum_, name, count_);
}

namespace {
std::vector<double> latency_buckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
}

void header(std::string& out, const char* name, const char* type, const char* help) {
  out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

// A metric of one unlabelled value.
template <typename Value>
void metric(std::string& out, const char* name, const char* type, const char* help, Value value) {
  header(out, name, type, help);
  out += fmt::format("{} {}\n", name, value);
}
}  // namespace

Metrics::Metrics()
    : time_to_first_token_(latency_buckets()), inter_token_(latency_buckets()), request_latency_(latency_buckets()) {}

void Metrics::count_request(const std::string& endpoint, int status) {
  std::lock_guard lock(mutex_);
  ++requests_[{endpoint, status}];
}

void Metrics::observe_time_to_first_token(double seconds) {
  std::lock_guard lock(mutex_);
  time_to_first_token_.observe(seconds);
}

void Metrics::observe_inter_token(double seconds) {
  std::lock_guard lock(mutex_);
  inter_token_.observe(seconds);
}

void Metrics::observe_request(double seconds, int64_t prompt_tokens, int64_t generated_tokens) {
  std::lock_guard lock(mutex_);
  request_latency_.observe(seconds);
  prompt_tokens_ += prompt_tokens;
  generated_tokens_ += generated_tokens;
}

std::string Metrics::render(const EngineStats& e) const {
  std::lock_guard lock(mutex_);
  std::string out;
  header(out, "deepmoe_requests_total", "counter", "HTTP requests by endpoint and status");
  for (const auto& [key, count] : requests_)
    out += fmt::format("deepmoe_requests_total{{endpoint=\"{}\",status=\"{}\"}} {}\n", key.first, key.second, count);
  header(out, "deepmoe_time_to_first_token_seconds", "histogram", "from request arrival to its first token");
  time_to_first_token_.render(out, "deepmoe_time_to_first_token_seconds");
  header(out, "deepmoe_inter_token_latency_seconds", "histogram", "between consecutive tokens of a request");
  inter_token_.render(out, "deepmoe_inter_token_latency_seconds");
  header(out, "deepmoe_request_latency_seconds", "histogram", "from request arrival to its last token");
  request_latency_.render(out, "deepmoe_request_latency_seconds");
  metric(out, "deepmoe_prompt_tokens_total", "counter", "prompt tokens of finished requests", prompt_tokens_);
  metric(out, "deepmoe_generation_tokens_total", "counter", "tokens generated for finished requests",
         generated_tokens_);
  metric(out, "deepmoe_requests_running", "gauge", "sequences in the running batch", e.running);
  metric(out, "deepmoe_requests_waiting", "gauge", "requests queued for a batch slot", e.waiting);
  header(out, "deepmoe_kv_blocks", "gauge", "latent cache blocks: used (held by sequences), free (incl. cached)");
  out += fmt::format("deepmoe_kv_blocks{{state=\"used\"}} {}\ndeepmoe_kv_blocks{{state=\"free\"}} {}\n",
                     e.kv_blocks_used, e.kv_blocks_free);
  metric(out, "deepmoe_kv_blocks_cached", "gauge", "free blocks still holding a reusable prefix", e.kv_blocks_cached);
  metric(out, "deepmoe_kv_block_tokens", "gauge", "positions per block", e.kv_block_tokens);
  metric(out, "deepmoe_prefix_cache_queries_total", "counter", "prompt tokens looked up in the prefix cache",
         e.prefix_queried_tokens);
  metric(out, "deepmoe_prefix_cache_hits_total", "counter", "prompt tokens served from the prefix cache",
         e.prefix_hit_tokens);
  metric(out, "deepmoe_prefix_cache_hit_rate", "gauge", "hits / queries since start",
         e.prefix_queried_tokens ? double(e.prefix_hit_tokens) / double(e.prefix_queried_tokens) : 0.0);
  metric(out, "deepmoe_preemptions_total", "counter", "sequences preempted for lack of cache blocks", e.preemptions);
  metric(out, "deepmoe_engine_steps_total", "counter", "batched forward steps", e.steps);
  metric(out, "deepmoe_spec_decode_steps_total", "counter", "steps that verified drafts (speculative decoding)",
         e.speculative_steps);
  metric(out, "deepmoe_spec_decode_draft_tokens_total", "counter", "draft tokens verified", e.draft_tokens);
  metric(out, "deepmoe_spec_decode_accepted_tokens_total", "counter", "draft tokens accepted", e.accepted_tokens);
  header(out, "deepmoe_expert_tokens_total", "counter", "tokens routed to each expert of each MoE layer");
  for (size_t layer = 0; layer < e.expert_load.size(); ++layer) {
    const auto& load = e.expert_load[layer];
    if (std::all_of(load.begin(), load.end(), [](int64_t n) { return n == 0; })) continue;  // dense layer
    for (size_t expert = 0; expert < load.size(); ++expert)
      out += fmt::format("deepmoe_expert_tokens_total{{layer=\"{}\",expert=\"{}\"}} {}\n", layer, expert, load[expert]);
  }
  return out;
}

}  // namespace deepmoe
