// Windows of a token file (raw little-endian uint32, `deepmoe prepare`'s output): training's batches,
// perplexity's and quantization calibration's windows. Here, not in train/, because model/ reads it too.
#pragma once
#include <cstdint>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "io/mapped_file.h"

namespace deepmoe {

enum class WindowOrder { Random, Sequential };

class TokenWindows {
 public:
  // Throws Error when the file is not a whole number of uint32 or holds fewer than seq + 1 tokens.
  TokenWindows(const std::string& path, int64_t seq, WindowOrder order, uint64_t seed);

  int64_t tokens() const { return n_tokens_; }
  // Fills inputs/targets [batch * seq] for `step`: sequential windows k = step·batch + b start at
  // k·seq (wrapping around the file); random windows start anywhere, from a seeded stream that
  // depends only on (seed, step), so a resumed run draws the same windows.
  void batch(int64_t step, int64_t batch, std::vector<int32_t>& inputs, std::vector<int32_t>& targets) const;
  // Windows first .. first + count - 1 of the stream batch() deals out in batches of `batch`
  // (window k is window k % batch of batch(k / batch, batch)), into inputs/targets [count * seq]:
  // a data-parallel rank's share of a step, the windows one process would train on.
  void windows(int64_t first, int64_t count, int64_t batch, std::vector<int32_t>& inputs,
               std::vector<int32_t>& targets) const;

 private:
  std::unique_ptr<MappedFile> file_;
  const uint32_t* data_ = nullptr;
  int64_t n_tokens_ = 0, seq_ = 0;
  WindowOrder order_;
  uint64_t seed_;
};

}  // namespace deepmoe
