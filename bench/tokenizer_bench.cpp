// Tokenizer speed, one thread: loading tokenizer.json (median of 5) and encoding a text file
// (median of 3 passes, a fresh tokenizer each time so the word cache starts cold).
//   tokenizer_bench TOKENIZER_DIR TEXT_FILE   -> one JSON line
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <sstream>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    fmt::print(stderr, "usage: tokenizer_bench TOKENIZER_DIR TEXT_FILE\n");
    return 2;
  }
  std::ifstream in(argv[2], std::ios::binary);
  std::ostringstream buffer;
  buffer << in.rdbuf();
  const std::string text = buffer.str();

  std::vector<double> load, encode;
  size_t tokens = 0;
  for (int i = 0; i < 5; ++i) {
    const auto start = std::chrono::steady_clock::now();
    const auto tokenizer = deepmoe::Tokenizer::load(argv[1]);
    load.push_back(seconds_since(start));
    if (i >= 3) continue;
    const auto encode_start = std::chrono::steady_clock::now();
    tokens = tokenizer->encode(text).size();
    encode.push_back(seconds_since(encode_start));
  }
  fmt::print(
      "{{\"engine\": \"deepmoe\", \"load_ms\": {:.1f}, \"encode_mb_s\": {:.2f}, \"tokens\": {}, \"bytes\": {}}}\n",
      median(load) * 1e3, double(text.size()) / median(encode) / 1e6, tokens, text.size());
  return 0;
}
