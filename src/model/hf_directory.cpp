#include "model/hf_directory.h"

#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <span>

#include "core/error.h"
#include "io/gguf.h"
#include "io/mapped_file.h"
#include "io/safetensors.h"
#include "kernels/ggml_blocks.h"
#include "model/gguf_import.h"
#include "model/weights.h"
#include "tokenizer/gguf_tokenizer.h"

namespace deepmoe {

namespace {
void write_text(const std::filesystem::path& path, const std::string& text) {
  write_file_atomically(path.string(), std::span(reinterpret_cast<const uint8_t*>(text.data()), text.size()));
}
}  // namespace

void write_hf_directory(const std::string& out_dir, const std::string& config_json,
                        const std::vector<TensorToProduce>& tensors, const TokenizerText& tokenizer) {
  namespace fs = std::filesystem;
  std::error_code error;
  fs::create_directories(out_dir, error);
  if (error || !fs::is_directory(out_dir)) fail("{}: cannot create the directory: {}", out_dir, error.message());
  std::vector<TensorHeader> headers;
  for (const auto& t : tensors) headers.push_back({t.name, t.dtype, t.shape});
  SafetensorsWriter writer((fs::path(out_dir) / "model.safetensors").string(), headers);
  for (const auto& t : tensors) {
    const std::vector<uint8_t> bytes = t.bytes();
    writer.write_next(bytes);
  }
  writer.finish();
  // A stale index would point loaders at shards that are not ours.
  fs::remove(fs::path(out_dir) / "model.safetensors.index.json", error);
  write_text(fs::path(out_dir) / "config.json", config_json);
  if (!tokenizer.tokenizer_json.empty()) write_text(fs::path(out_dir) / "tokenizer.json", tokenizer.tokenizer_json);
  if (!tokenizer.tokenizer_config_json.empty())
    write_text(fs::path(out_dir) / "tokenizer_config.json", tokenizer.tokenizer_config_json);
}

void export_hf_directory(const ModelWeights& model, const std::string& model_path, const std::string& out_dir,
                         DType dtype) {
  if (dtype != DType::F32 && dtype != DType::BF16) fail("convert: HF output is f32 or bf16");
  const auto encode = [dtype](const std::vector<float>& values) {
    if (dtype == DType::F32) {
      const auto* p = reinterpret_cast<const uint8_t*>(values.data());
      return std::vector<uint8_t>(p, p + values.size() * 4);
    }
    std::vector<uint8_t> out(values.size() * 2);
    for (size_t i = 0; i < values.size(); ++i) {
      const uint16_t bits = f32_to_bf16(values[i]);
      std::memcpy(out.data() + 2 * i, &bits, 2);
    }
    return out;
  };
  std::map<std::string, const WeightMatrix*> matrices;
  for (const auto& [name, w] : model.named_matrices()) matrices[name] = w;
  const auto is_quantization_extra = [&](const std::string& name) {
    for (const char* suffix : {".weight_scale", ".weight_zero_point", ".input_scale", ".input_zero_point"})
      if (name.ends_with(suffix))
        return matrices.count(name.substr(0, name.size() - std::strlen(suffix)) + ".weight") > 0;
    return false;
  };
  std::vector<TensorToProduce> tensors;
  // Plain loop variables: lambdas below capture them (clang 14 cannot capture structured bindings).
  for (const auto& entry : model.reader().tensors()) {
    const std::string& name = entry.first;
    const TensorView& view = entry.second;
    if (is_quantization_extra(name) || view.derived) continue;
    if (const auto it = matrices.find(name); it != matrices.end()) {
      const WeightMatrix* w = it->second;
      tensors.push_back({name, dtype, {w->rows, w->cols}, [w, encode] {
                           std::vector<float> values(size_t(w->rows * w->cols));
                           dequantize_rows(*w, 0, w->rows, values.data());
                           return encode(values);
                         }});
      continue;
    }
    const bool numbers = view.dtype == DType::F32 || view.dtype == DType::F16 || view.dtype == DType::BF16 ||
                         view.dtype == DType::Q8_0 || view.dtype == DType::Q4_0;
    if (!numbers) {
      tensors.push_back({name, view.dtype, view.shape,
                         [&view] { return std::vector<uint8_t>(view.data, view.data + view.n_bytes); }});
      continue;
    }
    tensors.push_back({name, dtype, view.shape, [&view, encode] {
                         std::vector<uint8_t> bounce(view.data, view.data + view.n_bytes);  // aligned reads
                         std::vector<float> values(size_t(view.numel()));
                         decode_to_f32(view.dtype, bounce.data(), values.data(), view.numel());
                         return encode(values);
                       }});
  }
  for (const auto& entry : model.kv_b_proj_to_join()) {
    const MlaWeights* attn = entry.second;
    tensors.push_back({entry.first, dtype, kv_b_proj_shape(model.config),
                       [&model, attn, encode] { return encode(join_kv_b_proj(model.config, *attn)); }});
  }
  nlohmann::ordered_json config = nlohmann::ordered_json::parse(model.config_json, nullptr, false);
  if (config.is_discarded() || !config.is_object()) fail("convert: the source config is not a JSON object");
  config.erase("quantization_config");
  config["torch_dtype"] = dtype == DType::F32 ? "float32" : "bfloat16";
  write_hf_directory(out_dir, config.dump(2) + "\n", tensors, read_model_tokenizer_text(model_path));
}

TokenizerText read_model_tokenizer_text(const std::string& model_path) {
  namespace fs = std::filesystem;
  TokenizerText text;
  if (is_gguf_path(model_path)) {
    const MappedFile file(model_path);
    const GgufFile gguf = parse_gguf(file.bytes(), model_path);
    if (!gguf.find("tokenizer.ggml.tokens")) return text;
    const GgufTokenizerFiles files = tokenizer_files_from_gguf(gguf);
    return {files.tokenizer_json, files.tokenizer_config_json};
  }
  const fs::path dir(model_path);
  if (fs::exists(dir / "tokenizer.json")) text.tokenizer_json = read_text_file((dir / "tokenizer.json").string());
  if (fs::exists(dir / "tokenizer_config.json"))
    text.tokenizer_config_json = read_text_file((dir / "tokenizer_config.json").string());
  return text;
}

}  // namespace deepmoe
