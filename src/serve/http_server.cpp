#include "serve/http_server.h"

#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <set>
#include <thread>

#include "core/error.h"
#include "serve/completion_run.h"

namespace deepmoe {

using nlohmann::json;

namespace {

std::string dump(const json& value) { return value.dump(-1, ' ', false, json::error_handler_t::replace); }

void send_json(httplib::Response& response, int status, const json& body) {
  response.status = status;
  response.set_content(dump(body), "application/json");
}

void send_error(httplib::Response& response, int status, const std::string& message, const std::string& param = {},
                const std::string& type = "invalid_request_error") {
  send_json(response, status, error_body(message, type, param));
}

std::string random_id(const char* prefix) {
  static std::atomic<uint64_t> counter{0};
  std::random_device entropy;
  return fmt::format("{}-{:08x}{:08x}", prefix, entropy(), uint32_t(counter++));
}

int64_t unix_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

json usage_json(const CompletionRun& run) {
  return {{"prompt_tokens", run.prompt_tokens()},
          {"completion_tokens", run.completion_tokens()},
          {"total_tokens", run.prompt_tokens() + run.completion_tokens()},
          {"prompt_tokens_details", {{"cached_tokens", run.cached_tokens()}}}};
}

// The completions format's logprobs of a run of tokens.
struct CompletionLogprobs {
  json tokens = json::array(), token_logprobs = json::array(), top_logprobs = json::array(), text_offset = json::array();
  void add(const Tokenizer& tokenizer, const EngineToken& token, int64_t offset) {
    tokens.push_back(tokenizer.token_bytes(token.token));
    token_logprobs.push_back(token.logprob);
    json top = json::object();
    for (const TokenLogprob& entry : token.top) top[tokenizer.token_bytes(entry.token)] = entry.logprob;
    top_logprobs.push_back(top);
    text_offset.push_back(offset);
  }
  json to_json() const {
    return {{"tokens", tokens}, {"token_logprobs", token_logprobs}, {"top_logprobs", top_logprobs}, {"text_offset", text_offset}};
  }
};

// Debian's cpp-httplib listens with a backlog of 5 (compiled into the library): 16 clients that
// connect at once overflow it, and the kernel drops their SYNs, which clients resend after a
// second (measured: p99 time to first token 1.05 s at concurrency 16). listen() again on the
// bound socket raises the backlog; the library keeps no accessor for its socket, so it is found
// among this process's descriptors by its port.
void raise_listen_backlog(int port) {
  for (int fd = 0; fd < 4096; ++fd) {
    int listening = 0;
    socklen_t size = sizeof(listening);
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &size) != 0 || !listening) continue;
    sockaddr_storage address{};
    socklen_t address_size = sizeof(address);
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&address), &address_size) != 0) continue;
    int bound = -1;
    if (address.ss_family == AF_INET) bound = ntohs(reinterpret_cast<sockaddr_in*>(&address)->sin_port);
    if (address.ss_family == AF_INET6) bound = ntohs(reinterpret_cast<sockaddr_in6*>(&address)->sin6_port);
    if (bound == port) listen(fd, SOMAXCONN);
  }
}

}  // namespace

HttpServer::HttpServer(Engine& engine, const Tokenizer& tokenizer, const ChatTemplate* chat_template,
                       ServerOptions options)
    : engine_(engine),
      tokenizer_(tokenizer),
      chat_template_(chat_template),
      options_(std::move(options)),
      server_(std::make_unique<httplib::Server>()),
      created_(unix_seconds()) {
  // A thread per connection in flight: every queued or running request's handler waits on its
  // stream, plus room for /health and /metrics while the queue is full.
  const size_t threads = size_t(std::min<int64_t>(engine_.options().max_queue + engine_.options().max_batch + 16, 1024));
  server_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  server_->set_payload_max_length(options_.max_body_bytes);
  routes();
}

HttpServer::~HttpServer() = default;

void HttpServer::bind() {
  if (options_.port == 0) {
    port_ = server_->bind_to_any_port(options_.host);
    if (port_ <= 0) fail("cannot listen on {}: no free port", options_.host);
  } else {
    if (!server_->bind_to_port(options_.host, options_.port))
      fail("cannot listen on {}:{} (address in use, or not an address of this machine)", options_.host, options_.port);
    port_ = options_.port;
  }
  raise_listen_backlog(port_);
}

void HttpServer::serve() { server_->listen_after_bind(); }

void HttpServer::stop() { server_->stop(); }

void HttpServer::drain(std::chrono::milliseconds grace) {
  draining_ = true;
  const auto deadline = std::chrono::steady_clock::now() + grace;
  while (engine_.in_flight() > 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  engine_.cancel_all();
  const auto cancel_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (engine_.in_flight() > 0 && std::chrono::steady_clock::now() < cancel_deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  server_->stop();
}

nlohmann::json HttpServer::model_object() const {
  return {{"id", options_.limits.model_id}, {"object", "model"}, {"created", created_}, {"owned_by", "deepmoe"},
          {"max_model_len", options_.limits.context}};
}

void HttpServer::routes() {
  httplib::Server& s = *server_;
  s.set_pre_routing_handler([this](const httplib::Request& request, httplib::Response& response) {
    if (request.path == "/health") return httplib::Server::HandlerResponse::Unhandled;
    if (!options_.api_key.empty() && request.get_header_value("Authorization") != "Bearer " + options_.api_key) {
      send_error(response, 401, "missing or wrong API key (Authorization: Bearer KEY)", {}, "authentication_error");
      return httplib::Server::HandlerResponse::Handled;
    }
    if (draining_ && request.path != "/metrics") {
      send_error(response, 503, "the server is shutting down", {}, "service_unavailable");
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  s.set_post_routing_handler([this](const httplib::Request& request, httplib::Response& response) {
    // Known routes only: a label per unknown path would let clients grow the metrics without bound.
    static const std::set<std::string> routes = {"/health", "/metrics", "/tokenize", "/detokenize", "/v1/models",
                                                 "/v1/completions", "/v1/chat/completions"};
    std::string endpoint = routes.count(request.path) ? request.path : "(other)";
    if (request.path.rfind("/v1/models/", 0) == 0) endpoint = "/v1/models/{id}";
    metrics_.count_request(endpoint, response.status);
  });
  s.set_error_handler([](const httplib::Request& request, httplib::Response& response) {
    if (!response.body.empty()) return;
    if (response.status == 413) return send_error(response, 413, "the request body is too large");
    if (response.status == 404) return send_error(response, 404, fmt::format("no route {} {}", request.method, request.path));
    send_error(response, response.status, fmt::format("HTTP status {}", response.status));
  });
  s.set_exception_handler([](const httplib::Request&, httplib::Response& response, std::exception_ptr error) {
    std::string message = "internal error";
    try {
      std::rethrow_exception(error);
    } catch (const std::exception& e) {
      message = e.what();
    } catch (...) {
    }
    send_error(response, 500, message, {}, "server_error");
  });

  s.Get("/health", [this](const httplib::Request&, httplib::Response& response) {
    if (draining_) return send_json(response, 503, {{"status", "draining"}});
    send_json(response, 200, {{"status", "ok"}});
  });
  s.Get("/v1/models", [this](const httplib::Request&, httplib::Response& response) {
    send_json(response, 200, {{"object", "list"}, {"data", json::array({model_object()})}});
  });
  s.Get(R"(/v1/models/(.+))", [this](const httplib::Request& request, httplib::Response& response) {
    if (request.matches[1] != options_.limits.model_id)
      return send_error(response, 404, fmt::format("the model '{}' does not exist", std::string(request.matches[1])),
                        "model");
    send_json(response, 200, model_object());
  });
  s.Get("/metrics", [this](const httplib::Request&, httplib::Response& response) {
    response.set_content(metrics_.render(engine_.stats()), "text/plain; version=0.0.4");
  });
  s.Post("/tokenize", [this](const httplib::Request& q, httplib::Response& r) { tokenize(q, r); });
  s.Post("/detokenize", [this](const httplib::Request& q, httplib::Response& r) { detokenize(q, r); });
  s.Post("/v1/completions", [this](const httplib::Request& q, httplib::Response& r) { completions(q, r, false); });
  s.Post("/v1/chat/completions", [this](const httplib::Request& q, httplib::Response& r) { completions(q, r, true); });
}

void HttpServer::tokenize(const httplib::Request& request, httplib::Response& response) {
  try {
    const json body = parse_json_object(request.body);
    std::vector<int32_t> ids;
    if (body.contains("messages")) {
      json chat = body;
      chat.erase("model");
      ids = parse_completion_request(dump(chat), true, options_.limits, tokenizer_, chat_template_).prompt;
    } else {
      auto prompt = body.find("prompt");
      if (prompt == body.end() || !prompt->is_string())
        throw ApiError(400, "'prompt': expected a string (or give 'messages')", "prompt");
      auto add = body.find("add_special_tokens");
      if (add != body.end() && !add->is_boolean()) throw ApiError(400, "'add_special_tokens': expected true or false", "add_special_tokens");
      ids = tokenizer_.encode(prompt->get<std::string>(), add == body.end() || add->get<bool>());
    }
    send_json(response, 200, {{"tokens", ids}, {"count", ids.size()}, {"max_model_len", options_.limits.context}});
  } catch (const ApiError& e) {
    send_error(response, e.status(), e.what(), e.param(), e.type());
  }
}

void HttpServer::detokenize(const httplib::Request& request, httplib::Response& response) {
  try {
    const json body = parse_json_object(request.body);
    auto tokens = body.find("tokens");
    if (tokens == body.end() || !tokens->is_array()) throw ApiError(400, "'tokens': expected an array of token ids", "tokens");
    std::vector<int32_t> ids;
    for (const json& id : *tokens) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= tokenizer_.id_limit())
        throw ApiError(400, fmt::format("'tokens': expected token ids in [0, {})", tokenizer_.id_limit()), "tokens");
      ids.push_back(int32_t(id.get<int64_t>()));
    }
    send_json(response, 200, {{"prompt", tokenizer_.decode(ids)}});
  } catch (const ApiError& e) {
    send_error(response, e.status(), e.what(), e.param(), e.type());
  }
}

// The choices of a whole (not streamed) response from everything its run produced.
json HttpServer::whole_choices(const CompletionRun& run, const std::vector<ChoiceDelta>& deltas,
                               const CompletionRequest& request) const {
  std::vector<std::string> texts(run.choices());
  std::vector<FinishReason> reasons(run.choices(), FinishReason::Stop);
  std::vector<json> chat_logprobs(run.choices(), json::array());
  std::vector<CompletionLogprobs> completion_logprobs(run.choices());
  for (const ChoiceDelta& delta : deltas) {
    if (delta.token && request.logprobs) {
      if (request.chat) chat_logprobs[delta.index].push_back(chat_logprob(tokenizer_, *delta.token));
      else completion_logprobs[delta.index].add(tokenizer_, *delta.token, int64_t(texts[delta.index].size()));
    }
    texts[delta.index] += delta.text;
    if (delta.finished) reasons[delta.index] = *delta.finished;
  }
  json choices = json::array();
  for (size_t i = 0; i < run.choices(); ++i) {
    json choice = {{"index", i}, {"finish_reason", finish_reason_name(reasons[i])}};
    if (request.chat) {
      choice["message"] = {{"role", "assistant"}, {"content", texts[i]}};
      choice["logprobs"] = request.logprobs ? json{{"content", chat_logprobs[i]}} : json(nullptr);
    } else {
      choice["text"] = texts[i];
      choice["logprobs"] = request.logprobs ? completion_logprobs[i].to_json() : json(nullptr);
    }
    choices.push_back(choice);
  }
  return choices;
}

void HttpServer::completions(const httplib::Request& request, httplib::Response& response, bool chat) {
  std::shared_ptr<CompletionRun> run;
  CompletionRequest parsed;
  try {
    parsed = parse_completion_request(request.body, chat, options_.limits, tokenizer_, chat_template_);
    run = std::make_shared<CompletionRun>(engine_, tokenizer_, parsed, metrics_);
  } catch (const ApiError& e) {
    return send_error(response, e.status(), e.what(), e.param(), e.type());
  } catch (const QueueFull& e) {
    response.set_header("Retry-After", "1");
    return send_error(response, 429, "the server is busy: its request queue is full; retry later", {}, "rate_limit_error");
  } catch (const Error& e) {
    return send_error(response, 400, e.what());
  }
  const std::string id = random_id(chat ? "chatcmpl" : "cmpl");
  const int64_t created = unix_seconds();
  const std::string object = chat ? "chat.completion" : "text_completion";
  const std::string& model = options_.limits.model_id;

  if (!parsed.stream) {
    // Whole responses: most finish within a short wait and go out with their status. A longer
    // one switches to a chunked body that starts with whitespace (valid before JSON) written
    // every 200 ms: a failed write means the client is gone, and the run is cancelled.
    auto whole = [=, this](const std::vector<ChoiceDelta>& deltas) {
      return json{{"id", id}, {"object", object}, {"created", created}, {"model", model},
                  {"choices", whole_choices(*run, deltas, parsed)}, {"usage", usage_json(*run)}};
    };
    std::vector<ChoiceDelta> deltas;
    const auto probe_every = std::chrono::milliseconds(200);
    const auto deadline = std::chrono::steady_clock::now() + probe_every;
    while (!run->done() && std::chrono::steady_clock::now() < deadline) run->poll(probe_every, deltas);
    if (run->done()) {
      if (!run->error().empty()) return send_error(response, 500, run->error(), {}, "server_error");
      return send_json(response, 200, whole(deltas));
    }
    response.set_chunked_content_provider(
        "application/json", [=, deltas = std::move(deltas)](size_t, httplib::DataSink& sink) mutable {
          auto next_probe = std::chrono::steady_clock::now();
          while (!run->done()) {
            run->poll(probe_every, deltas);
            if (std::chrono::steady_clock::now() < next_probe) continue;
            next_probe += probe_every;
            if (!sink.write(" ", 1)) {
              run->cancel();
              return false;
            }
          }
          const std::string body =
              dump(run->error().empty() ? whole(deltas) : error_body(run->error(), "server_error", {}));
          sink.write(body.data(), body.size());
          sink.done();
          return true;
        });
    return;
  }

  // Streaming: one server-sent event per token of each choice, then usage if asked, then [DONE].
  // A failed write means the client is gone: the run is cancelled and its blocks freed.
  const std::string chunk_object = chat ? "chat.completion.chunk" : "text_completion";
  response.set_header("Cache-Control", "no-cache");
  response.set_chunked_content_provider(
      "text/event-stream", [=, this](size_t, httplib::DataSink& sink) {
        auto send = [&](const json& event) {
          const std::string line = "data: " + dump(event) + "\n\n";
          return sink.write(line.data(), line.size());
        };
        auto chunk = [&](json choice_list) {
          return json{{"id", id}, {"object", chunk_object}, {"created", created}, {"model", model}, {"choices", choice_list}};
        };
        if (chat) {
          json first = json::array();
          for (size_t i = 0; i < run->choices(); ++i)
            first.push_back({{"index", i}, {"delta", {{"role", "assistant"}, {"content", ""}}}, {"logprobs", nullptr},
                             {"finish_reason", nullptr}});
          if (!send(chunk(first))) {
            run->cancel();
            return false;
          }
        }
        std::vector<int64_t> offsets(run->choices(), 0);
        std::vector<ChoiceDelta> deltas;
        while (!run->done()) {
          deltas.clear();
          if (!run->poll(std::chrono::milliseconds(1000), deltas)) {
            static const std::string keep_alive = ": keep-alive\n\n";  // an SSE comment; probes the connection
            if (!sink.write(keep_alive.data(), keep_alive.size())) {
              run->cancel();
              return false;
            }
            continue;
          }
          for (const ChoiceDelta& delta : deltas) {
            if (delta.text.empty() && !delta.finished && !(parsed.logprobs && delta.token)) continue;
            json choice = {{"index", delta.index},
                           {"finish_reason", delta.finished ? json(finish_reason_name(*delta.finished)) : json(nullptr)}};
            json logprobs = nullptr;
            if (parsed.logprobs && delta.token) {
              if (chat) {
                logprobs = {{"content", json::array({chat_logprob(tokenizer_, *delta.token)})}};
              } else {
                CompletionLogprobs one;
                one.add(tokenizer_, *delta.token, offsets[delta.index]);
                logprobs = one.to_json();
              }
            }
            offsets[delta.index] += int64_t(delta.text.size());
            choice["logprobs"] = logprobs;
            if (chat) choice["delta"] = delta.text.empty() ? json::object() : json{{"content", delta.text}};
            else choice["text"] = delta.text;
            if (!send(chunk(json::array({choice})))) {
              run->cancel();
              return false;
            }
          }
        }
        if (!run->error().empty()) send(error_body(run->error(), "server_error", {}));
        if (parsed.include_usage) {
          json last = chunk(json::array());
          last["usage"] = usage_json(*run);
          if (!send(last)) return false;
        }
        static const std::string done = "data: [DONE]\n\n";
        sink.write(done.data(), done.size());
        sink.done();
        return true;
      });
}

}  // namespace deepmoe
