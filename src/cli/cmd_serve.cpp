#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
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

// The API key: --api-key, else the first line of --api-key-file, else $DEEPMOE_API_KEY (a key on
// the command line is visible to every user of the machine in `ps`).
std::string resolve_api_key(const std::string& flag, const std::string& file) {
  if (!flag.empty() && !file.empty()) fail("give --api-key or --api-key-file, not both");
  if (!flag.empty()) return flag;
  if (!file.empty()) {
    std::ifstream in(file);
    if (!in) fail("--api-key-file {}: cannot read it", file);
    std::string key;
    std::getline(in, key);
    while (!key.empty() && std::isspace(static_cast<unsigned char>(key.back()))) key.pop_back();
    if (key.empty()) fail("--api-key-file {}: the first line is empty", file);
    return key;
  }
  const char* env = std::getenv("DEEPMOE_API_KEY");
  return env ? env : "";
}

// One connection is one descriptor: the default soft limit (often 1024) is below what
// --max-connections allows.
void raise_descriptor_limit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
  }
}
}  // namespace

void add_serve_command(CLI::App& app) {
  struct Options {
    LoadOptions load;
    std::string model, model_name, dtype = "auto", api_key_file;
    double read_timeout = 10;
    ServerOptions server;
    EngineOptions engine;
    double kv_cache_mb = 1024;
    SpeculativeOptions speculative;
    int threads = 0;
    int64_t drain_seconds = 30;
  };
  auto o = std::make_shared<Options>();
  auto* command = app.add_subcommand("serve", "OpenAI-compatible HTTP server with continuous batching");
  command->add_option("--model", o->model, "HuggingFace model directory (with tokenizer files) or .gguf")->required();
  add_load_options(command, o->load);
  command->add_option("--host", o->server.host, "address to listen on (default 127.0.0.1: this machine only)");
  command->add_option("--port", o->server.port, "port (0: any free port, printed at start)")
      ->check(CLI::Range(0, 65535));
  command->add_option("--api-key", o->server.api_key,
                      "require 'Authorization: Bearer KEY' on every endpoint but /health (visible in ps: prefer "
                      "--api-key-file or $DEEPMOE_API_KEY)");
  command->add_option("--api-key-file", o->api_key_file, "read the API key from the first line of this file");
  command->add_option("--cors-origin", o->server.cors_origins,
                      "let web pages of this origin call the server (e.g. http://localhost:3000; '*' for any); "
                      "repeatable. Other cross-origin requests are refused");
  command->add_option("--read-timeout", o->read_timeout,
                      "seconds a client has to send a request's headers, then its body; idle connections close "
                      "after it too (default 10)");
  command->add_option("--max-connections", o->server.max_connections,
                      "open connections; beyond it the longest-idle are closed (default 512)");
  command->add_option("--model-name", o->model_name,
                      "the model id clients send (default: the --model directory's name)");
  command->add_option("--max-batch", o->engine.max_batch, "sequences per step (default 16)");
  command->add_option("--max-batch-tokens", o->engine.max_batch_tokens,
                      "tokens per step, decode plus prompt chunks (default 256)");
  command->add_option("--kv-cache-mb", o->kv_cache_mb,
                      "latent cache size in MiB (fractions allowed), shared by all requests (default 1024)");
  command->add_option("--max-queue", o->engine.max_queue, "requests waiting beyond the batch before 429 (default 256)");
  command->add_option("--ctx", o->engine.context,
                      "longest sequence, prompt plus output (default: the model's, at most 4096)");
  command->add_option("--threads", o->threads, "compute threads (0: all cores)");
  command
      ->add_option("--dtype", o->dtype,
                   "weights as stored (auto) or f32 matrices rounded to bf16 at load (bf16: half the bytes per "
                   "step; activations stay f32)")
      ->check(CLI::IsMember({"auto", "bf16"}));
  add_speculative_options(command, o->speculative);
  command->add_option("--speculative-max-batch", o->engine.speculative_max_batch,
                      "speculate only while at most this many sequences decode (default 4)");
  command->add_option("--drain-seconds", o->drain_seconds,
                      "on SIGTERM, how long requests in flight may finish (default 30)");
  command->callback([o] {
    if (!(o->kv_cache_mb > 0) || o->kv_cache_mb > 1e7)
      fail("--kv-cache-mb must be in (0, 1e7], found {}", o->kv_cache_mb);
    if (o->engine.max_queue < 0) fail("--max-queue must be >= 0, found {}", o->engine.max_queue);
    if (o->drain_seconds < 0) fail("--drain-seconds must be >= 0, found {}", o->drain_seconds);
    if (!(o->read_timeout > 0) || o->read_timeout > 3600)
      fail("--read-timeout must be in (0, 3600], found {}", o->read_timeout);
    if (o->server.max_connections < 1 || o->server.max_connections > 65536)
      fail("--max-connections must be in [1, 65536], found {}", o->server.max_connections);
    const SpeculativeFlag speculative = parse_speculative(o->speculative.spec);
    if (!speculative.draft_dir.empty()) fail("--speculative: serve drafts with the model's MTP module (mtp:K)");
    if (o->engine.speculative_max_batch < 1)
      fail("--speculative-max-batch must be >= 1, found {}", o->engine.speculative_max_batch);
    o->engine.speculative_tokens = speculative.tokens;
    o->server.read_timeout = std::chrono::milliseconds(int64_t(o->read_timeout * 1000));
    o->server.api_key = resolve_api_key(o->server.api_key, o->api_key_file);
    raise_descriptor_limit();
    // A client that hangs up must not kill the process with SIGPIPE.
    signal(SIGPIPE, SIG_IGN);

    const auto tokenizer = load_model_tokenizer(o->model);
    std::unique_ptr<ChatTemplate> chat_template;
    if (!tokenizer->chat_template().empty()) chat_template = std::make_unique<ChatTemplate>(tokenizer->chat_template());
    const auto weights = load_model(o->model, o->load);
    if (o->dtype == "bf16") weights->round_to_bf16();
    const Config& config = weights->config;
    if (o->engine.context == 0) o->engine.context = std::min<int64_t>(config.max_position_embeddings, 4096);
    if (o->engine.context > config.max_position_embeddings)
      fail("--ctx {} exceeds the model's max_position_embeddings {}", o->engine.context,
           config.max_position_embeddings);
    o->engine.kv_blocks = PagedLatentCache::blocks_for_bytes(
        config, o->engine.cache_layers(config), o->engine.block_tokens, int64_t(o->kv_cache_mb * 1048576.0));
    o->engine.never_sample = unspellable_ids(*tokenizer, config.vocab_size);
    // A request's tokens must not depend on what it is batched with.
    ModelOptions model_options;
    model_options.threads = resolve_threads(o->threads);
    model_options.attention_mode = AttentionMode::Absorbed;
    model_options.context.batch_invariant = true;
    Model model(*weights, model_options);
    apply_draft_vocab(o->speculative, model);
    Engine engine(model, o->engine);

    std::string name = o->model_name;
    if (name.empty()) {
      std::filesystem::path path(o->model);
      name = (path.has_filename() ? path.filename() : path.parent_path().filename()).string();
    }
    o->server.limits.model_id = name;
    o->server.limits.context = o->engine.context;
    o->server.limits.max_prompt_bytes = prompt_byte_bound(*tokenizer, o->engine.context);
    HttpServer server(engine, *tokenizer, chat_template.get(), o->server);
    server.bind();
    fmt::print(
        stderr,
        "deepmoe serve: model '{}' on http://{}:{} (context {}, cache {} tokens, batch {} sequences / {} tokens, "
        "weights: {})\n",
        name, o->server.host, server.port(), o->engine.context, o->engine.kv_blocks * o->engine.block_tokens,
        o->engine.max_batch, o->engine.max_batch_tokens, weights->file_residence());
    if (o->server.api_key.empty() && !is_loopback_host(o->server.host))
      fmt::print(stderr,
                 "deepmoe serve: warning: listening on {} without an API key: anyone who can reach this "
                 "address can use the model (set --api-key-file or DEEPMOE_API_KEY)\n",
                 o->server.host);
    if (!o->engine.never_sample.empty())
      fmt::print(
          stderr,
          "deepmoe serve: {} of the model's {} token ids have no text in the tokenizer; they are never sampled\n",
          o->engine.never_sample.size(), config.vocab_size);
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
