// Load generator for an OpenAI-compatible server (bench/serve/run.sh): C client threads, each
// sending streamed completions back to back, unique prompts of P words, exactly G generated
// tokens each (ignore_eos). Per request it records the time to first token and the gaps between
// tokens (one SSE event per token); prints one JSON line per concurrency with the aggregate
// generated tokens/s and p50/p99 of both. Then the prefix-cache case: a long prompt's TTFT
// uncached (a fresh first word each time) against the same prompt again (from the cache).
// In C++ rather than Node so that the client takes as little as possible of the 2 cores it
// shares with the server.
//   serve_load HOST PORT MODEL [--concurrency 1,4,16,64] [--gen 128] [--prompt-words 48]
//              [--requests-per-client 8] [--long-prompt-words 1500]
#include <httplib.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

struct Result {
  double ttft = 0;
  std::vector<double> gaps;
  int64_t tokens = 0;
  bool ok = false;
};

const char* kWords[] = {"the", "of",   "and",  "to",    "a",     "in",    "that", "is",    "was",  "he",   "for",
                        "it",  "with", "as",   "his",   "on",    "be",    "at",   "by",    "had",  "this", "not",
                        "are", "but",  "from", "or",    "have",  "an",    "they", "which", "one",  "you",  "were",
                        "her", "all",  "she",  "there", "would", "their", "we",   "him",   "been", "has",  "when",
                        "who", "will", "more", "no",    "if",    "out",   "so",   "said"};
std::atomic<int64_t> g_counter{0};

// A prompt no other request shares a prefix with: a unique number first.
std::string unique_prompt(int64_t words) {
  const int64_t id = g_counter++;
  std::string prompt = "Request " + std::to_string(id) + ":";
  const int64_t n = int64_t(sizeof(kWords) / sizeof(kWords[0]));
  for (int64_t i = 0; i < words; ++i) prompt += std::string(" ") + kWords[(id * 7919 + i * 104729) % n];
  return prompt;
}

Result streamed(const std::string& host, int port, const std::string& model, const std::string& prompt,
                int64_t max_tokens) {
  httplib::Client client(host, port);
  client.set_read_timeout(600, 0);
  httplib::Request request;
  request.method = "POST";
  request.path = "/v1/completions";
  request.headers = {{"Content-Type", "application/json"}};
  request.body = nlohmann::json{{"model", model},   {"prompt", prompt},   {"max_tokens", max_tokens},
                                {"temperature", 0}, {"ignore_eos", true}, {"stream", true}}
                     .dump();
  Result result;
  std::vector<Clock::time_point> times;
  std::string buffer;
  const auto start = Clock::now();
  request.content_receiver = [&](const char* data, size_t length, uint64_t, uint64_t) {
    buffer.append(data, length);
    size_t end;
    while ((end = buffer.find("\n\n")) != std::string::npos) {
      const std::string event = buffer.substr(0, end);
      buffer.erase(0, end + 2);
      if (event.rfind("data: ", 0) != 0 || event == "data: [DONE]") continue;
      const auto chunk = nlohmann::json::parse(event.substr(6), nullptr, false);
      if (chunk.is_discarded()) continue;
      const auto& choices = chunk["choices"];
      if (choices.is_array() && !choices.empty() && choices[0]["finish_reason"].is_null())
        times.push_back(Clock::now());
    }
    return true;
  };
  httplib::Response response;
  httplib::Error error;
  if (!client.send(request, response, error) || response.status != 200 || times.empty()) return result;
  result.ok = true;
  result.tokens = int64_t(times.size());
  result.ttft = std::chrono::duration<double>(times[0] - start).count();
  for (size_t i = 1; i < times.size(); ++i)
    result.gaps.push_back(std::chrono::duration<double>(times[i] - times[i - 1]).count());
  return result;
}

double percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  return values[std::min(values.size() - 1, size_t(p / 100.0 * double(values.size())))];
}
double ms(double seconds) { return std::round(seconds * 10000.0) / 10.0; }

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr,
                 "usage: serve_load HOST PORT MODEL [--concurrency 1,4,16,64] [--gen N] [--prompt-words N] "
                 "[--requests-per-client N] [--long-prompt-words N]\n");
    return 2;
  }
  const std::string host = argv[1], model = argv[3];
  const int port = std::atoi(argv[2]);
  std::map<std::string, std::string> options = {{"concurrency", "1,4,16,64"},
                                                {"gen", "128"},
                                                {"prompt-words", "48"},
                                                {"requests-per-client", "8"},
                                                {"long-prompt-words", "1500"}};
  for (int i = 4; i + 1 < argc; i += 2) {
    const std::string name = std::string(argv[i]).substr(2);
    if (!options.count(name)) {
      std::fprintf(stderr, "serve_load: unknown option %s\n", argv[i]);
      return 2;
    }
    options[name] = argv[i + 1];
  }
  const int64_t gen = std::stoll(options["gen"]), prompt_words = std::stoll(options["prompt-words"]);
  const int64_t per_client = std::stoll(options["requests-per-client"]),
                long_words = std::stoll(options["long-prompt-words"]);
  std::vector<int> concurrencies;
  std::stringstream list(options["concurrency"]);
  for (std::string item; std::getline(list, item, ',');) concurrencies.push_back(std::stoi(item));

  streamed(host, port, model, unique_prompt(prompt_words), 8);  // warm-up
  int failures = 0;
  for (int c : concurrencies) {
    std::mutex mutex;
    std::vector<double> ttfts, gaps;
    int64_t tokens = 0;
    const auto start = Clock::now();
    std::vector<std::thread> clients;
    for (int i = 0; i < c; ++i)
      clients.emplace_back([&] {
        for (int64_t r = 0; r < per_client; ++r) {
          Result result = streamed(host, port, model, unique_prompt(prompt_words), gen);
          std::lock_guard lock(mutex);
          if (!result.ok) {
            ++failures;
            continue;
          }
          ttfts.push_back(result.ttft);
          gaps.insert(gaps.end(), result.gaps.begin(), result.gaps.end());
          tokens += result.tokens;
        }
      });
    for (auto& client : clients) client.join();
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    std::printf("%s\n", nlohmann::json{{"concurrency", c},
                                       {"requests", c * per_client},
                                       {"generated_tokens", tokens},
                                       {"seconds", std::round(seconds * 100) / 100},
                                       {"tokens_per_second", std::round(double(tokens) / seconds)},
                                       {"ttft_ms_p50", ms(percentile(ttfts, 50))},
                                       {"ttft_ms_p99", ms(percentile(ttfts, 99))},
                                       {"itl_ms_p50", ms(percentile(gaps, 50))},
                                       {"itl_ms_p99", ms(percentile(gaps, 99))}}
                            .dump()
                            .c_str());
    std::fflush(stdout);
  }
  const std::string long_prompt = unique_prompt(long_words);
  streamed(host, port, model, long_prompt, 1);
  std::vector<double> uncached, cached;
  for (int i = 0; i < 5; ++i) {
    uncached.push_back(streamed(host, port, model, unique_prompt(long_words), 1).ttft);
    cached.push_back(streamed(host, port, model, long_prompt, 1).ttft);
  }
  const double u = percentile(uncached, 50), k = percentile(cached, 50);
  std::printf("%s\n", nlohmann::json{{"prefix_cache", true},
                                     {"long_prompt_words", long_words},
                                     {"ttft_ms_uncached", ms(u)},
                                     {"ttft_ms_cached", ms(k)},
                                     {"speedup", std::round(u / k * 10) / 10}}
                          .dump()
                          .c_str());
  if (failures) std::fprintf(stderr, "serve_load: %d requests failed\n", failures);
  return failures ? 1 : 0;
}
