// Writes a HuggingFace model directory: config.json, one model.safetensors streamed tensor by
// tensor (each produced only when written, so models larger than memory pass through), and the
// tokenizer files. Each file is written atomically.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace deepmoe {

struct TensorToProduce {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::function<std::vector<uint8_t>()> bytes;  // exactly the tensor's size
};

struct TokenizerText {
  std::string tokenizer_json, tokenizer_config_json;  // empty: not written
};

void write_hf_directory(const std::string& out_dir, const std::string& config_json,
                        const std::vector<TensorToProduce>& tensors, const TokenizerText& tokenizer);

struct ModelWeights;
// The model (from a .gguf, or a quantized directory) as a plain HF directory with every float
// tensor in `dtype` (F32 or BF16): quantized matrices dequantized, quantization_config dropped.
void export_hf_directory(const ModelWeights& model, const std::string& model_path, const std::string& out_dir,
                         DType dtype);

// The tokenizer of a model directory or .gguf as text (empty when it has none).
TokenizerText read_model_tokenizer_text(const std::string& model_path);

}  // namespace deepmoe
