// The HTTP face of the engine (cpp-httplib): OpenAI's /v1/completions, /v1/chat/completions
// (streamed as server-sent events or whole), /v1/models, plus /health, /tokenize, /detokenize
// and Prometheus /metrics. Handlers run on the library's thread pool and only wait on their
// requests' streams; the engine's one step loop does all model work. Every refusal is an
// OpenAI error object: 400 bad fields, 401 without the API key, 404, 413 bodies over the limit,
// 429 with Retry-After when the queue is full, 503 while draining. First contact is guarded:
// POST bodies must be JSON, nested at most kMaxJsonNesting deep; without an API key only this
// machine's host names are accepted in Host (DNS rebinding); cross-origin requests only from
// --cors-origin; slow or idle connections are cut (ConnectionGuard).
#pragma once
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "serve/completion_run.h"
#include "serve/engine.h"
#include "serve/metrics.h"
#include "serve/openai_api.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace httplib {
class Server;
class DataSink;
struct Request;
struct Response;
}  // namespace httplib

namespace deepmoe {

class ConnectionGuard;

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;      // 0: any free port (see HttpServer::port)
  std::string api_key;  // empty: no authentication
  size_t max_body_bytes = size_t(4) << 20;
  // Origins whose web pages may call the server (CORS); "*" for any. Other cross-origin requests are refused.
  std::vector<std::string> cors_origins;
  // A client must deliver a request's headers, and then its body, within this; idle keep-alive
  // connections are closed after it too.
  std::chrono::milliseconds read_timeout{10000};
  size_t max_connections = 512;  // open at once; beyond it the longest-waiting idle ones are closed
  ApiLimits limits;
};

// Whether a server on `host` can be reached only from this machine.
bool is_loopback_host(const std::string& host);

// A chunked body's provider (cpp-httplib's ContentProviderWithoutLength).
using BodyProvider = std::function<bool(size_t offset, httplib::DataSink& sink)>;
// `provider`, except that an exception never leaves it (cpp-httplib does not catch one there:
// std::terminate): on one, `on_error` runs and the body ends with error_text(what was thrown).
BodyProvider never_throwing(BodyProvider provider, std::function<std::string(const std::string&)> error_text,
                            std::function<void()> on_error);

class HttpServer {
 public:
  HttpServer(Engine& engine, const Tokenizer& tokenizer, const ChatTemplate* chat_template, ServerOptions options);
  ~HttpServer();
  // Binds the address; throws Error naming it when that fails.
  void bind();
  int port() const { return port_; }
  // Serves until stop() or drain() ends it.
  void serve();
  // Refuses new requests (503), lets those in flight finish for up to `grace`, cancels the rest, stops.
  void drain(std::chrono::milliseconds grace);
  void stop();

 private:
  void routes();
  void completions(const httplib::Request& request, httplib::Response& response, bool chat);
  void tokenize(const httplib::Request& request, httplib::Response& response);
  void detokenize(const httplib::Request& request, httplib::Response& response);
  // The refusal of a request before routing (bad Host, origin, key, content type; draining), or
  // nothing. Sets CORS headers on `response` for an allowed origin.
  bool refuse_before_routing(const httplib::Request& request, httplib::Response& response);

  Engine& engine_;
  const Tokenizer& tokenizer_;
  const ChatTemplate* chat_template_;
  ServerOptions options_;
  Metrics metrics_;
  std::unique_ptr<ConnectionGuard> guard_;
  std::unique_ptr<httplib::Server> server_;
  int port_ = 0;
  std::atomic<bool> draining_{false};
  int64_t created_ = 0;
};

}  // namespace deepmoe
