// Every tensor a config implies, by HF name and shape: what init writes, what training owns.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"

namespace deepmoe {

// How a random checkpoint initializes the tensor (and whether training updates it: biases
// such as e_score_correction_bias are never trained by the optimizer).
enum class Init { Projection, Embedding, Norm, Bias };

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  Init init;
};

// The main layers only (never multi-token-prediction modules); lm_head only when untied.
std::vector<TensorSpec> tensor_specs(const Config& config);

}  // namespace deepmoe
