// A test model whose MTP module drafts well without training: a random model's module drafts
// tokens the model almost never picks (under 1% accepted), which leaves acceptance and rollback
// untried. This one is tied (a random tied model mostly repeats its last token) and its module's
// eh_proj passes the next token's embedding through, so it drafts "repeat" too: most drafts are
// accepted, some not.
#pragma once
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "core/error.h"
#include "model/random_init.h"
#include "model/weights.h"
#include "train/parameters.h"

namespace deepmoe::testing {

// config_json: a config with "num_nextn_predict_layers": 1, without tie_word_embeddings.
inline std::unique_ptr<ModelWeights> agreeing_mtp_model(const std::filesystem::path& dir, std::string config_json,
                                                        uint64_t seed) {
  std::filesystem::create_directories(dir);
  config_json.insert(config_json.rfind('}'), R"(, "tie_word_embeddings": true)");
  std::ofstream(dir / "config.json") << config_json;
  write_random_checkpoint((dir / "config.json").string(), (dir / "model").string(), seed, DType::F32);
  train::Parameters p = train::Parameters::load((dir / "model").string());
  const int64_t hidden = p.config().hidden_size;
  float* eh_proj = p.value(fmt::format("model.layers.{}.eh_proj.weight", p.config().num_hidden_layers));
  if (eh_proj == nullptr) fail("no MTP module in the test model's config");
  for (int64_t r = 0; r < hidden; ++r)
    for (int64_t c = 0; c < 2 * hidden; ++c) eh_proj[r * 2 * hidden + c] = c == r ? 4.0f : 0.0f;
  p.save((dir / "model").string());
  return ModelWeights::load((dir / "model").string());
}

}  // namespace deepmoe::testing
