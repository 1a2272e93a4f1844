#include "eval/http_backend.h"

#include <httplib.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <exception>
#include <functional>
#include <limits>
#include <mutex>
#include <thread>

#include "core/error.h"
#include "eval/concurrently.h"

namespace deepmoe::eval {

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// OpenAI and vLLM take at most this many stop strings (so does deepmoe serve); the rest are cut
// here, which gives the same text.
constexpr size_t kServerStops = 4;

// The server's error message from an OpenAI error body, else the body's start.
std::string error_message(const std::string& body) {
  try {
    const json j = json::parse(body);
    if (j.contains("error") && j["error"].contains("message")) return j["error"]["message"].get<std::string>();
  } catch (const std::exception&) {
  }
  return body.substr(0, 200);
}

class Connection {
 public:
  Connection(const std::string& origin, const HttpBackendOptions& options) : client_(origin), origin_(origin) {
    client_.set_read_timeout(std::chrono::milliseconds(int64_t(options.timeout_seconds * 1000)));
    client_.set_connection_timeout(std::chrono::seconds(10));
    if (!options.api_key.empty()) client_.set_bearer_token_auth(options.api_key);
  }
  // POSTs `body`; every received piece goes to `on_data` when given. Returns the body otherwise.
  std::string post(const std::string& path, const json& body,
                   const std::function<void(const char*, size_t)>& on_data = nullptr) {
    httplib::Request request;
    request.method = "POST";
    request.path = path;
    request.body = body.dump();
    request.set_header("Content-Type", "application/json");
    std::string received;
    request.content_receiver = [&](const char* data, size_t size, uint64_t, uint64_t) {
      if (on_data) on_data(data, size);
      received.append(data, size);
      return true;
    };
    return check(client_.send(request), path, received);
  }
  std::string get(const std::string& path) {
    auto result = client_.Get(path);
    return check(result, path, result ? result->body : std::string());
  }

 private:
  std::string check(const httplib::Result& result, const std::string& path, const std::string& body) {
    if (!result) fail("{}{}: cannot reach the server: {}", origin_, path, httplib::to_string(result.error()));
    if (result->status != 200)
      fail("{}{}: HTTP {}: {}", origin_, path, result->status, error_message(body.empty() ? result->body : body));
    return body;
  }
  httplib::Client client_;
  std::string origin_;
};

}  // namespace

HttpBackend::HttpBackend(const Tokenizer&, HttpBackendOptions options) : options_(std::move(options)) {
  std::string url = options_.endpoint;
  const size_t scheme = url.find("://");
  if (scheme == std::string::npos || (url.substr(0, scheme) != "http" && url.substr(0, scheme) != "https"))
    fail("--endpoint '{}': expected http://host:port or https://host:port", options_.endpoint);
  const size_t path = url.find('/', scheme + 3);
  origin_ = url.substr(0, path);
  prefix_ = path == std::string::npos ? "" : url.substr(path);
  while (!prefix_.empty() && prefix_.back() == '/') prefix_.pop_back();
  for (const char* tail : {"/completions", "/chat/completions", "/v1"})
    if (prefix_.ends_with(tail)) prefix_.resize(prefix_.size() - std::string_view(tail).size());
  if (origin_.size() <= scheme + 3) fail("--endpoint '{}': no host", options_.endpoint);
  if (options_.model.empty()) {
    Connection connection(origin_, options_);
    const std::string body = connection.get(prefix_ + "/v1/models");
    try {
      options_.model = json::parse(body).at("data").at(0).at("id").get<std::string>();
    } catch (const std::exception&) {
      fail("{}{}/v1/models: no model id in the answer (pass --endpoint-model)", origin_, prefix_);
    }
  }
}

std::vector<std::vector<ContinuationScore>> HttpBackend::loglikelihood(std::span<const EncodedQuestion> questions) {
  // One request per choice, lm-eval's: the context's and continuation's ids as the prompt, echo,
  // one logprob alternative, one token generated (max_tokens 0 is not every server's).
  struct Job {
    size_t question, choice;
  };
  std::vector<Job> firsts, others;
  std::vector<std::vector<ContinuationScore>> scores(questions.size());
  for (size_t i = 0; i < questions.size(); ++i) {
    scores[i].resize(questions[i].continuations.size());
    for (size_t c = 0; c < questions[i].continuations.size(); ++c) (c == 0 ? firsts : others).push_back({i, c});
  }
  const std::string path = prefix_ + "/v1/completions";
  // The first choices first, so a server with a prefix cache finds each context cached for the rest.
  for (const std::vector<Job>* jobs : {&firsts, &others})
    run_concurrently(jobs->size(), options_.concurrency, [&](size_t j) {
      thread_local std::unique_ptr<Connection> connection;
      if (!connection) connection = std::make_unique<Connection>(origin_, options_);
      const EncodedQuestion& q = questions[(*jobs)[j].question];
      const std::vector<int32_t>& continuation = q.continuations[(*jobs)[j].choice];
      std::vector<int32_t> prompt = q.context;
      prompt.insert(prompt.end(), continuation.begin(), continuation.end());
      const json body = {{"model", options_.model}, {"prompt", prompt}, {"max_tokens", 1}, {"echo", true},
                         {"logprobs", 1},           {"temperature", 0}, {"seed", 1234}};
      const std::string answer = connection->post(path, body);
      prompt_tokens_ += int64_t(prompt.size());
      ContinuationScore s;
      try {
        const json logprobs = json::parse(answer).at("choices").at(0).at("logprobs");
        const json& tokens = logprobs.at("tokens");
        const json& token_logprobs = logprobs.at("token_logprobs");
        const json& top = logprobs.at("top_logprobs");
        if (token_logprobs.size() < prompt.size())
          fail("{} logprobs for a prompt of {} tokens", token_logprobs.size(), prompt.size());
        s.tokens = int64_t(continuation.size());
        s.greedy = true;
        for (size_t i = q.context.size(); i < prompt.size(); ++i) {
          s.logprob += token_logprobs.at(i).get<double>();
          // lm-eval's is_greedy: the most likely alternative is the token itself.
          const json& alternatives = top.at(i);
          std::string best;
          double best_logprob = -std::numeric_limits<double>::infinity();
          for (const auto& [text, value] : alternatives.items())
            if (value.get<double>() > best_logprob) best = text, best_logprob = value.get<double>();
          s.greedy = s.greedy && best == tokens.at(i).get<std::string>();
        }
      } catch (const Error&) {
        throw;
      } catch (const std::exception& e) {
        fail("{}{}: the answer has no usable echo logprobs ({}); the server must support echo with logprobs", origin_,
             path, e.what());
      }
      scores[(*jobs)[j].question][(*jobs)[j].choice] = s;
    });
  return scores;
}

std::vector<Generation> HttpBackend::generate(std::span<const GenerationRequest> requests) {
  std::vector<Generation> out(requests.size());
  const std::string path = prefix_ + "/v1/completions";
  run_concurrently(requests.size(), options_.concurrency, [&](size_t i) {
    thread_local std::unique_ptr<Connection> connection;
    if (!connection) connection = std::make_unique<Connection>(origin_, options_);
    const GenerationRequest& g = requests[i];
    json body = {{"model", options_.model},
                 {"prompt", g.prompt},
                 {"max_tokens", g.max_tokens},
                 {"temperature", g.sampling.temperature},
                 {"top_p", g.sampling.top_p},
                 {"seed", int64_t(g.sampling.seed)},
                 {"stream", true},
                 {"stream_options", {{"include_usage", true}}}};
    if (!g.stop.empty())
      body["stop"] = std::vector<std::string>(g.stop.begin(), g.stop.begin() + std::min(g.stop.size(), kServerStops));
    if (g.ignore_eos) body["ignore_eos"] = true;
    Generation& result = out[i];
    std::string pending;  // server-sent events arrive in pieces; one ends at a blank line
    const auto start = Clock::now();
    bool first = false;
    connection->post(path, body, [&](const char* data, size_t size) {
      pending.append(data, size);
      for (size_t end; (end = pending.find("\n\n")) != std::string::npos; pending.erase(0, end + 2)) {
        const std::string event = pending.substr(0, end);
        if (!event.starts_with("data: ") || event == "data: [DONE]") continue;
        const json chunk = json::parse(event.substr(6), nullptr, false);
        if (chunk.is_discarded()) fail("{}{}: a stream event is not JSON", origin_, path);
        if (chunk.contains("usage") && chunk["usage"].is_object()) {
          result.prompt_tokens = chunk["usage"].value("prompt_tokens", int64_t(0));
          result.tokens = chunk["usage"].value("completion_tokens", int64_t(0));
        }
        if (!chunk.contains("choices") || chunk["choices"].empty()) continue;
        const std::string text = chunk["choices"][0].value("text", std::string());
        if (!text.empty() && !first) {
          first = true;
          result.first_token_seconds = std::chrono::duration<double>(Clock::now() - start).count();
        }
        result.text += text;
      }
    });
    result.seconds = std::chrono::duration<double>(Clock::now() - start).count();
    if (!first) result.first_token_seconds = result.seconds;
    prompt_tokens_ += result.prompt_tokens;
    result.text = cut_at_stop_sequences(result.text, g.stop);
  });
  return out;
}

}  // namespace deepmoe::eval
