// An HF DeepSeek checkpoint directory → a GGUF file of llama.cpp's `deepseek2` architecture:
// its metadata keys (with the exact on-disk types its loader demands), its tensor names and
// layouts (experts stacked per layer, kv_b_proj split into attn_k_b / attn_v_b for the absorbed
// MLA layout), and the tokenizer (tokens, merges, token types, pre-tokenizer name, special ids,
// chat template) when the directory has a tokenizer.json.
#pragma once
#include <string>

#include "io/gguf.h"

namespace deepmoe {

// weight_type: F32, F16, Q8_0 or Q4_0 for the matrices (rows that are not whole 32-value
// blocks stay F16 for the quantized types); norms, the router and the selection bias stay F32,
// as llama.cpp's own quantizer leaves them. Throws Error naming what cannot be converted.
void export_gguf(const std::string& model_dir, const std::string& out_path, GgmlType weight_type);

}  // namespace deepmoe
