// deepmoe quantize: a model in, a quantized HF directory out (docs/quantization.md). The tensors
// the list marks quantizable (TensorInfo::quantizable: attention projections but kv_b_proj, dense
// MLP, shared and routed experts, lm_head) are quantized; embeddings, norms, the router,
// e_score_correction_bias and kv_b_proj keep their precision, and so does any tensor whose name
// matches `keep`.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "kernels/quantize.h"
#include "model/weights.h"

namespace deepmoe {

struct QuantizeRequest {
  std::string type;                               // w8, w8a8, w4g32|64|128[_asym], q8_0, q4_0
  std::string keep_regex;                         // PCRE2, matched against whole HF tensor names; empty: none
  std::string activations;                        // w8a8: static (needs calibration ranges) or dynamic
  std::map<std::string, Uint8Range> calibration;  // w8a8 static: per weight name
};

struct QuantizeSummary {
  int64_t quantized = 0, kept_by_rule = 0, kept_by_regex = 0, kept_by_shape = 0;
  size_t bytes_before = 0, bytes_after = 0;
};

// Throws Error on a bad type, regex or a missing calibration range.
QuantizeSummary quantize_model(const ModelWeights& model, const std::string& model_path, const QuantizeRequest& request,
                               const std::string& out_dir);

// Runs the model over up to n_tokens tokens of a uint32 token file in windows of `seq` and
// returns, per weight, the uint8 range of the activations it multiplied (W8A8 static).
// Weights no calibration token reached (rarely routed experts) take the range of the same
// projection over the whole layer, or over the model.
std::map<std::string, Uint8Range> calibrate_activation_ranges(const ModelWeights& model, const std::string& tokens_file,
                                                              int64_t n_tokens, int64_t seq, int threads);

}  // namespace deepmoe
