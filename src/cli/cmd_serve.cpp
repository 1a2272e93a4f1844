#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <thread>

#include "cli/common.h"
#include "core/error.h"
#include "kernels/matmul.h"
#include "serve/engine.h"
#include "serve/http_server.h"
#include "serve/paged_latent_cache.h"

namespace deepmoe::cli {

namespace {
// SIGTERM and SIGINT only write their number to a pipe (async-signal-safe); a thread reads it
// and drains the server. (Blocking the signals for sigwait would not do: OpenBLAS starts its
// threads before main, with the signals unblocked.)
int g_signal_pipe[2] = {-1, -1};

extern "C" void on_stop_signal(int signal_number) {
  const char byte = char(signal_number);
  [[maybe_unused]] const ssize_t written = write(g_signal_pipe[1], &byte, 1);
}
}  // namespace

void add_serve_command(CLI::App& app) {
  struct Options {
    std::string model, model_name, dtype = "auto";
    ServerOptions server;
    EngineOptions engine;
    double kv_cache_mb = 1024;
    int threads = 0;
    int64_t drain_seconds = 30;
  };
  auto o = std::make_shared<Options>();
  auto* command = app.add_subcommand("serve", "OpenAI-compatible HTTP server with continuous batching");
  command->add_option("--model", o->model, "HuggingFace model directory (with tokenizer files) or .gguf")->required();
  command->add_option("--host", o->server.host, "address to listen on (default 127.0.0.1: this machine only)");
  command->add_option("--port", o->server.port, "port (0: any free port, printed at start)")->check(CLI::Range(0, 65535));
  command->add_option("--api-key", o->server.api_key, "require 'Authorization: Bearer KEY' on every endpoint but /health");
  command->add_option("--model-name", o->model_name, "the model id clients send (default: the --model directory's name)");
  command->add_option("--max-batch", o->engine.max_batch, "sequences per step (default 16)");
  command->add_option("--max-batch-tokens", o->engine.max_batch_tokens, "tokens per step, decode plus prompt chunks (default 256)");
  command->add_option("--kv-cache-mb", o->kv_cache_mb, "latent cache size in MiB (fractions allowed), shared by all requests (default 1024)");
  command->add_option("--max-queue", o->engine.max_queue, "requests waiting beyond the batch before 429 (default 256)");
  command->add_option("--ctx", o->engine.context, "longest sequence, prompt plus output (default: the model's, at most 4096)");
  command->add_option("--threads", o->threads, "compute threads (0: all cores)");
  command->add_option("--dtype", o->dtype,
                      "weights as stored (auto) or f32 matrices rounded to bf16 at load (bf16: half the bytes per "
                      "step; activations stay f32)")
      ->check(CLI::IsMember({"auto", "bf16"}));
  command->add_option("--drain-seconds", o->drain_seconds, "on SIGTERM, how long requests in flight may finish (default 30)");
  command->callback([o] {
    if (!(o->kv_cache_mb > 0) || o->kv_cache_mb > 1e7) fail("--kv-cache-mb must be in (0, 1e7], found {}", o->kv_cache_mb);
    if (o->engine.max_queue < 0) fail("--max-queue must be >= 0, found {}", o->engine.max_queue);
    if (o->drain_seconds < 0) fail("--drain-seconds must be >= 0, found {}", o->drain_seconds);
    // A client that hangs up must not kill the process with SIGPIPE.
    signal(SIGPIPE, SIG_IGN);

    const auto tokenizer = load_model_tokenizer(o->model);
    std::unique_ptr<ChatTemplate> chat_template;
    if (!tokenizer->chat_template().empty()) chat_template = std::make_unique<ChatTemplate>(tokenizer->chat_template());
    const auto weights = load_model(o->model);
    if (o->dtype == "bf16") weights->round_to_bf16();
    const Config& config = weights->config;
    if (o->engine.context == 0) o->engine.context = std::min<int64_t>(config.max_position_embeddings, 4096);
    if (o->engine.context > config.max_position_embeddings)
      fail("--ctx {} exceeds the model's max_position_embeddings {}", o->engine.context, config.max_position_embeddings);
    o->engine.kv_blocks =
        PagedLatentCache::blocks_for_bytes(config, o->engine.block_tokens, int64_t(o->kv_cache_mb * 1048576.0));
    Model model(*weights, resolve_threads(o->threads));
    // A request's tokens must not depend on what it is batched with.
    model.forced_attention_mode = AttentionMode::Absorbed;
    set_batch_invariant_kernels(true);
    Engine engine(model, o->engine);

    std::string name = o->model_name;
    if (name.empty()) {
      std::filesystem::path path(o->model);
      name = (path.has_filename() ? path.filename() : path.parent_path().filename()).string();
    }
    o->server.limits.model_id = name;
    o->server.limits.context = o->engine.context;
    HttpServer server(engine, *tokenizer, chat_template.get(), o->server);
    server.bind();
    fmt::print(stderr, "deepmoe serve: model '{}' on http://{}:{} (context {}, cache {} tokens, batch {} sequences / {} tokens)\n",
               name, o->server.host, server.port(), o->engine.context, o->engine.kv_blocks * o->engine.block_tokens,
               o->engine.max_batch, o->engine.max_batch_tokens);
    if (pipe(g_signal_pipe) != 0) fail("cannot create a pipe for signal handling");
    struct sigaction action {};
    action.sa_handler = on_stop_signal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGTERM, &action, nullptr);
    sigaction(SIGINT, &action, nullptr);
    std::thread on_signal([&] {
      char received = 0;
      if (read(g_signal_pipe[0], &received, 1) != 1 || received == 0) return;  // 0: the server ended by itself
      fmt::print(stderr, "deepmoe serve: {}: finishing requests in flight (up to {} s)\n",
                 received == SIGTERM ? "SIGTERM" : "SIGINT", o->drain_seconds);
      server.drain(std::chrono::seconds(o->drain_seconds));
    });
    server.serve();
    const char end = 0;
    [[maybe_unused]] const ssize_t written = write(g_signal_pipe[1], &end, 1);
    on_signal.join();
    fmt::print(stderr, "deepmoe serve: stopped\n");
  });
}

}  // namespace deepmoe::cli
