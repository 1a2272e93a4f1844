#include "eval/speed.h"

#include <algorithm>

namespace deepmoe::eval {

namespace {

double median(std::vector<double> values) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

double mean(const std::vector<double>& values) {
  double sum = 0;
  for (double v : values) sum += v;
  return values.empty() ? 0 : sum / double(values.size());
}

// Time between the first token and the last, per token after the first.
double decode_ms_per_token(const Generation& g) {
  return (g.seconds - g.first_token_seconds) * 1000.0 / double(g.tokens - 1);
}

}  // namespace

nlohmann::json latency_probe(Backend& backend, const std::string& prompt, int64_t tokens) {
  GenerationRequest request;
  request.prompt = prompt;
  request.max_tokens = tokens;
  request.ignore_eos = true;
  const Generation g = backend.generate(std::span(&request, 1))[0];
  nlohmann::json out = {
      {"prompt_tokens", g.prompt_tokens},
      {"generated_tokens", g.tokens},
      {"time_to_first_token_ms", g.first_token_seconds * 1000.0},
      {"prompt_ms_per_token", g.first_token_seconds * 1000.0 / double(std::max<int64_t>(g.prompt_tokens, 1))}};
  if (g.tokens > 1) out["decode_ms_per_token"] = decode_ms_per_token(g);
  return out;
}

nlohmann::json generation_speed(const std::vector<Generation>& generations) {
  std::vector<double> first, decode;
  int64_t generated = 0;
  for (const Generation& g : generations) {
    first.push_back(g.first_token_seconds * 1000.0);
    if (g.tokens > 1) decode.push_back(decode_ms_per_token(g));
    generated += g.tokens;
  }
  return {{"requests", generations.size()},
          {"generated_tokens", generated},
          {"time_to_first_token_ms", {{"mean", mean(first)}, {"median", median(first)}}},
          {"decode_ms_per_token", {{"mean", mean(decode)}, {"median", median(decode)}}}};
}

}  // namespace deepmoe::eval
