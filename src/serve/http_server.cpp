#include "serve/http_server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <algorithm>
#include <cctype>
#include <set>
#include <thread>

#include "core/error.h"
#include "serve/completion_run.h"
#include "serve/connection_guard.h"

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

// Debian's cpp-httplib listens with a backlog of 5 (compiled into the library): 16 clients that
// connect at once overflow it, and the kernel drops their SYNs, which clients resend after a
// second (measured: p99 time to first token 1.05 s at concurrency 16). listen() again on the
// bound socket raises the backlog; the library keeps no accessor for its socket, so it is found
// among this process's descriptors by its port.
void raise_listen_backlog(int port) {
  for (int fd = 0; fd < 4096; ++fd) {
    bool listening = false;
    if (tcp_local_port(fd, &listening) == port && listening) listen(fd, SOMAXCONN);
  }
}

// Whether `given` equals `expected`, in time that depends on the lengths only: an API key must
// not leak through how soon a comparison fails.
bool constant_time_equal(std::string_view given, std::string_view expected) {
  unsigned char difference = given.size() != expected.size();
  for (size_t i = 0; i < expected.size(); ++i)
    difference |= static_cast<unsigned char>((i < given.size() ? given[i] : 0) ^ expected[i]);
  return difference == 0;
}

std::string lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  return text;
}

// The host name of a Host header ("[::1]:8080" -> "::1", "localhost:80" -> "localhost").
std::string host_name(const std::string& header) {
  if (!header.empty() && header[0] == '[') return lower(header.substr(1, header.find(']') - 1));
  return lower(header.substr(0, header.find(':')));
}

// Whether a Content-Type names JSON (parameters such as charset allowed).
bool is_json_content_type(const std::string& header) {
  std::string type = lower(header.substr(0, header.find(';')));
  type.erase(std::remove_if(type.begin(), type.end(), [](unsigned char c) { return std::isspace(c); }), type.end());
  return type == "application/json";
}

}  // namespace

BodyProvider never_throwing(BodyProvider provider, std::function<std::string(const std::string&)> error_text,
                            std::function<void()> on_error) {
  return [provider = std::move(provider), error_text = std::move(error_text), on_error = std::move(on_error)](
             size_t offset, httplib::DataSink& sink) {
    std::string message;
    try {
      return provider(offset, sink);
    } catch (const std::exception& e) {
      message = e.what();
    } catch (...) {
      message = "internal error";
    }
    on_error();
    const std::string text = error_text(message);
    if (sink.write(text.data(), text.size())) sink.done();
    return true;
  };
}

bool is_loopback_host(const std::string& host) {
  const std::string name = lower(host);
  return name == "localhost" || name == "::1" || name.rfind("127.", 0) == 0;
}

HttpServer::HttpServer(Engine& engine, const Tokenizer& tokenizer, const ChatTemplate* chat_template,
                       ServerOptions options)
    : engine_(engine),
      tokenizer_(tokenizer),
      chat_template_(chat_template),
      options_(std::move(options)),
      server_(std::make_unique<httplib::Server>()),
      created_(unix_seconds()) {
  // A thread per open connection (every queued or running request's handler waits on its stream),
  // plus room for /health and /metrics while the guard sheds connections over the cap.
  guard_ = std::make_unique<ConnectionGuard>(options_.read_timeout, options_.max_connections);
  const size_t threads = options_.max_connections + 16;
  server_->new_task_queue = [threads] { return new ConnectionThreads(threads); };
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
  guard_->start(port_);
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

void HttpServer::routes() {
  httplib::Server& s = *server_;
  s.set_pre_routing_handler([this](const httplib::Request& request, httplib::Response& response) {
    guard_->touch(request.remote_addr, request.remote_port);  // the headers are in; the body has its own time
    if (request.path == "/health") return httplib::Server::HandlerResponse::Unhandled;
    return refuse_before_routing(request, response) ? httplib::Server::HandlerResponse::Handled
                                                    : httplib::Server::HandlerResponse::Unhandled;
  });
  s.set_post_routing_handler([this](const httplib::Request& request, httplib::Response& response) {
    // Known routes only: a label per unknown path would let clients grow the metrics without bound.
    static const std::set<std::string> routes = {"/health",    "/metrics",        "/tokenize",           "/detokenize",
                                                 "/v1/models", "/v1/completions", "/v1/chat/completions"};
    std::string endpoint = routes.count(request.path) ? request.path : "(other)";
    if (request.path.rfind("/v1/models/", 0) == 0) endpoint = "/v1/models/{id}";
    metrics_.count_request(endpoint, response.status);
  });
  s.set_error_handler([](const httplib::Request& request, httplib::Response& response) {
    if (!response.body.empty()) return;
    if (response.status == 413) return send_error(response, 413, "the request body is too large");
    if (response.status == 404)
      return send_error(response, 404, fmt::format("no route {} {}", request.method, request.path));
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
    send_json(response, 200, model_list(options_.limits, created_));
  });
  s.Get(R"(/v1/models/(.+))", [this](const httplib::Request& request, httplib::Response& response) {
    if (request.matches[1] != options_.limits.model_id)
      return send_error(response, 404, fmt::format("the model '{}' does not exist", std::string(request.matches[1])),
                        "model");
    send_json(response, 200, model_object(options_.limits, created_));
  });
  s.Get("/metrics", [this](const httplib::Request&, httplib::Response& response) {
    response.set_content(metrics_.render(engine_.stats()), "text/plain; version=0.0.4");
  });
  // The body has been read: the connection is busy until the answer is out (the guard leaves it).
  s.Post("/tokenize", [this](const httplib::Request& q, httplib::Response& r) {
    const auto busy = guard_->busy(q.remote_addr, q.remote_port);
    tokenize(q, r);
  });
  s.Post("/detokenize", [this](const httplib::Request& q, httplib::Response& r) {
    const auto busy = guard_->busy(q.remote_addr, q.remote_port);
    detokenize(q, r);
  });
  s.Post("/v1/completions", [this](const httplib::Request& q, httplib::Response& r) { completions(q, r, false); });
  s.Post("/v1/chat/completions", [this](const httplib::Request& q, httplib::Response& r) { completions(q, r, true); });
}

bool HttpServer::refuse_before_routing(const httplib::Request& request, httplib::Response& response) {
  // Without a key, a loopback server answers only its own names: a web page whose DNS name is
  // rebound to 127.0.0.1 sends its own name in Host.
  if (options_.api_key.empty() && is_loopback_host(options_.host)) {
    const std::string host = host_name(request.get_header_value("Host"));
    if (!is_loopback_host(host) && host != lower(options_.host)) {
      send_error(response, 403,
                 fmt::format("Host '{}' is not this server's (without --api-key, only localhost names)",
                             request.get_header_value("Host")));
      return true;
    }
  }
  // Browsers name the page's origin; only --cors-origin ones (and the server's own) may call.
  if (request.has_header("Origin")) {
    const std::string origin = request.get_header_value("Origin");
    const bool allowed = std::any_of(options_.cors_origins.begin(), options_.cors_origins.end(),
                                     [&](const std::string& o) { return o == "*" || o == origin; });
    const bool same_origin = origin == "http://" + request.get_header_value("Host");
    if (!allowed && !same_origin) {
      send_error(response, 403,
                 fmt::format("cross-origin request from '{}' refused (allow it with --cors-origin)", origin));
      return true;
    }
    if (allowed) {
      response.set_header("Access-Control-Allow-Origin", origin);
      response.set_header("Vary", "Origin");
    }
    if (request.method == "OPTIONS") {  // a preflight: what the page may send
      response.status = 204;
      response.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS");
      response.set_header("Access-Control-Allow-Headers", "Authorization, Content-Type");
      response.set_header("Access-Control-Max-Age", "600");
      return true;
    }
  }
  if (!options_.api_key.empty() &&
      !constant_time_equal(request.get_header_value("Authorization"), "Bearer " + options_.api_key)) {
    send_error(response, 401, "missing or wrong API key (Authorization: Bearer KEY)", {}, "authentication_error");
    return true;
  }
  if (draining_ && request.path != "/metrics") {
    send_error(response, 503, "the server is shutting down", {}, "service_unavailable");
    return true;
  }
  // A form or text/plain POST is what a page may send cross-site without asking first: JSON only.
  if (request.method == "POST" && !is_json_content_type(request.get_header_value("Content-Type"))) {
    send_error(response, 415, "the request body must be JSON, sent with 'Content-Type: application/json'");
    return true;
  }
  return false;
}

void HttpServer::tokenize(const httplib::Request& request, httplib::Response& response) {
  try {
    const json body = parse_json_object(request.body);
    std::vector<int32_t> ids;
    if (body.contains("messages")) {
      json chat = body;
      chat.erase("model");
      ids = parse_completion_request(dump(chat), true, options_.limits, tokenizer_, chat_template_).prompts.front();
    } else {
      auto prompt = body.find("prompt");
      if (prompt == body.end() || !prompt->is_string())
        throw ApiError(400, "'prompt': expected a string (or give 'messages')", "prompt");
      auto add = body.find("add_special_tokens");
      if (add != body.end() && !add->is_boolean())
        throw ApiError(400, "'add_special_tokens': expected true or false", "add_special_tokens");
      ids = tokenizer_.encode(prompt->get<std::string>(), add == body.end() || add->get<bool>());
    }
    send_json(response, 200, {{"tokens", ids}, {"count", ids.size()}, {"max_model_len", options_.limits.context}});
  } catch (const ApiError& e) {
    send_error(response, e.status(), e.what(), e.param(), e.type());
  } catch (const Error& e) {
    send_error(response, 400, e.what());
  }
}

void HttpServer::detokenize(const httplib::Request& request, httplib::Response& response) {
  try {
    const json body = parse_json_object(request.body);
    auto tokens = body.find("tokens");
    if (tokens == body.end() || !tokens->is_array())
      throw ApiError(400, "'tokens': expected an array of token ids", "tokens");
    std::vector<int32_t> ids;
    for (size_t i = 0; i < tokens->size(); ++i) {
      const json& id = (*tokens)[i];
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= tokenizer_.id_limit())
        throw ApiError(400, fmt::format("'tokens': expected token ids in [0, {})", tokenizer_.id_limit()), "tokens");
      if (!tokenizer_.spells(int32_t(id.get<int64_t>())))
        throw ApiError(400, fmt::format("'tokens[{}]': the vocabulary has no token {}", i, id.get<int64_t>()),
                       "tokens");
      ids.push_back(int32_t(id.get<int64_t>()));
    }
    send_json(response, 200, {{"prompt", tokenizer_.decode(ids)}});
  } catch (const ApiError& e) {
    send_error(response, e.status(), e.what(), e.param(), e.type());
  }
}

void HttpServer::completions(const httplib::Request& request, httplib::Response& response, bool chat) {
  // Held until the answer is out, by the body providers below when the answer is streamed.
  const std::shared_ptr<void> busy = guard_->busy(request.remote_addr, request.remote_port);
  std::shared_ptr<CompletionRun> run;
  CompletionRequest parsed;
  try {
    parsed = parse_completion_request(request.body, chat, options_.limits, tokenizer_, chat_template_);
    run = std::make_shared<CompletionRun>(engine_, tokenizer_, parsed, metrics_);
  } catch (const ApiError& e) {
    return send_error(response, e.status(), e.what(), e.param(), e.type());
  } catch (const QueueFull& e) {
    response.set_header("Retry-After", "1");
    return send_error(response, 429, "the server is busy: its request queue is full; retry later", {},
                      "rate_limit_error");
  } catch (const Error& e) {
    return send_error(response, 400, e.what());
  }
  const ResponseIds ids{random_id(chat ? "chatcmpl" : "cmpl"), unix_seconds(), options_.limits.model_id, chat};

  if (!parsed.stream) {
    // Whole responses: most finish within a short wait and go out with their status. A longer
    // one switches to a chunked body that starts with whitespace (valid before JSON) written
    // every 200 ms: a failed write means the client is gone, and the run is cancelled.
    auto whole = [=, this](const std::vector<ChoiceDelta>& deltas) {
      return completion_response(ids, run->choices(), deltas, parsed.logprobs, run->usage(), tokenizer_);
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
        "application/json",
        never_throwing(
            [=, deltas = std::move(deltas)](size_t, httplib::DataSink& sink) mutable {
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
            },
            [](const std::string& message) { return dump(error_body(message, "server_error", {})); },
            [run, busy] { run->cancel(); }));  // the busy token lives as long as the body
    return;
  }

  // Streaming: one server-sent event per token of each choice, then usage if asked, then [DONE].
  // A failed write means the client is gone: the run is cancelled and its blocks freed.
  response.set_header("Cache-Control", "no-cache");
  response.set_chunked_content_provider(
      "text/event-stream",
      never_throwing(
          [=, this](size_t, httplib::DataSink& sink) {
            auto send = [&](const json& event) {
              const std::string line = "data: " + dump(event) + "\n\n";
              return sink.write(line.data(), line.size());
            };
            if (chat && !send(chat_role_chunk(ids, run->choices()))) {
              run->cancel();
              return false;
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
                const std::optional<json> chunk =
                    stream_chunk(ids, delta, parsed.logprobs, offsets[delta.index], tokenizer_);
                offsets[delta.index] += int64_t(delta.text.size());
                if (chunk && !send(*chunk)) {
                  run->cancel();
                  return false;
                }
              }
            }
            if (!run->error().empty()) send(error_body(run->error(), "server_error", {}));
            if (parsed.include_usage && !send(usage_chunk(ids, run->usage()))) return false;
            static const std::string done = "data: [DONE]\n\n";
            sink.write(done.data(), done.size());
            sink.done();
            return true;
          },
          [](const std::string& message) {
            return "data: " + dump(error_body(message, "server_error", {})) + "\n\ndata: [DONE]\n\n";
          },
          [run, busy] { run->cancel(); }));
}

}  // namespace deepmoe
