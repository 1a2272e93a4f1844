// The serving engine without HTTP: C sequences submitted at once to deepmoe's Engine (continuous
// batching, paged cache, batch-invariant kernels as `deepmoe serve` runs them), P random prompt
// tokens and exactly G generated tokens each; aggregate generated tokens/s per concurrency, as
// JSON lines. bench/peer_llamacpp/batch.mjs measures llama.cpp the same way, in process.
//   engine_bench MODEL [--concurrency 1,4,16,64] [--prompt 64] [--gen 128] [--threads 2] [--reps 3] [--dtype auto|bf16]
//   [--temperature 0] [--top-p 1]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/matmul.h"
#include "serve/engine.h"

using namespace deepmoe;

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr,
                 "usage: engine_bench MODEL [--concurrency 1,4,16,64] [--prompt P] [--gen G] [--threads T] [--reps R] "
                 "[--dtype auto|bf16] [--temperature T] [--top-p P]\n");
    return 2;
  }
  std::map<std::string, std::string> options = {{"concurrency", "1,4,16,64"},
                                                {"prompt", "64"},
                                                {"gen", "128"},
                                                {"threads", "2"},
                                                {"reps", "3"},
                                                {"dtype", "auto"},
                                                {"temperature", "0"},
                                                {"top-p", "1"}};
  for (int i = 2; i + 1 < argc; i += 2) options[std::string(argv[i]).substr(2)] = argv[i + 1];
  const int64_t prompt = std::stoll(options["prompt"]), gen = std::stoll(options["gen"]);
  const int reps = std::stoi(options["reps"]);
  std::vector<int> concurrencies;
  std::stringstream list(options["concurrency"]);
  for (std::string item; std::getline(list, item, ',');) concurrencies.push_back(std::stoi(item));
  try {
    const auto weights = ModelWeights::load(argv[1]);
    if (options["dtype"] == "bf16") weights->round_to_bf16();
    ModelOptions model_options;  // as the server runs it
    model_options.threads = std::stoi(options["threads"]);
    model_options.attention_mode = AttentionMode::Absorbed;
    model_options.context.batch_invariant = true;
    Model model(*weights, model_options);
    EngineOptions engine_options;
    engine_options.max_batch = 64;
    engine_options.context = prompt + gen + 1;
    engine_options.kv_blocks = 64 * ((engine_options.context + 15) / 16) + 64;
    Engine engine(model, engine_options);
    const int64_t vocab = weights->config.vocab_size;
    uint32_t state = 1234;  // the same LCG as the peer's script: random prompt ids
    for (int c : concurrencies) {
      std::vector<double> rates;
      for (int rep = 0; rep < reps + 1; ++rep) {  // the first is a warm-up
        const auto start = std::chrono::steady_clock::now();
        std::vector<std::shared_ptr<RequestStream>> streams;
        for (int i = 0; i < c; ++i) {
          EngineRequest request;
          for (int64_t t = 0; t < prompt; ++t) {
            state = state * 1103515245u + 12345u;
            request.prompt.push_back(int32_t(state % uint32_t(vocab)));
          }
          request.max_tokens = gen;
          request.sampling.temperature = std::stof(options["temperature"]);
          request.sampling.top_p = std::stof(options["top-p"]);
          request.sampling.seed = uint64_t(i);
          streams.push_back(engine.submit(std::move(request)));
        }
        int64_t tokens = 0;
        EngineToken token;
        for (auto& stream : streams)
          while (stream->next(token, std::chrono::seconds(600)) == RequestStream::Next::Token) ++tokens;
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        if (rep > 0) rates.push_back(double(tokens) / seconds);
      }
      std::sort(rates.begin(), rates.end());
      std::printf(
          "{\"engine\": \"deepmoe\", \"concurrency\": %d, \"prompt\": %ld, \"gen\": %ld, \"tokens_per_second\": "
          "%.0f}\n",
          c, long(prompt), long(gen), rates[rates.size() / 2]);
      std::fflush(stdout);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "engine_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
