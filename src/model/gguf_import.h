// A GGUF file of llama.cpp's `deepseek2` architecture seen as an HF checkpoint, so every command
// that loads a model directory loads a .gguf too: the config rebuilt from the metadata, the
// tensors presented under the HF names and shapes the tensor list gives their GGUF names (in
// place, Q8_0/Q4_0 blocks included, stacked experts sliced per expert). attn_k_b/attn_v_b, the two halves of kv_b_proj,
// are presented as they are under deepmoe's own names self_attn.k_b_proj / self_attn.v_b_proj: attention multiplies by
// them, as llama.cpp does, and converters join them into kv_b_proj (join_kv_b_proj) only when they write one.
#pragma once
#include <memory>
#include <string>

#include "io/safetensors.h"
#include "model/config.h"

namespace deepmoe {

// A regular file whose name ends in .gguf.
bool is_gguf_path(const std::string& path);

struct GgufCheckpoint {
  Config config;
  std::string config_json;  // the config.json the metadata stands for
  std::unique_ptr<CheckpointReader> reader;
};

// Throws Error naming the file and what is missing or malformed.
GgufCheckpoint import_gguf(const std::string& path, LoadOptions load = {});

}  // namespace deepmoe
