#include "model/weights.h"

#include <fmt/format.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>

#include "core/dtype.h"
#include "core/error.h"
#include "kernels/ggml_blocks.h"
#include "kernels/quantize.h"
#include "io/mapped_file.h"
#include "model/gguf_import.h"

namespace deepmoe {

// Fetches tensors by name with shape checks, records which names were used, and owns what it
// had to widen. One instance per load.
class WeightLoader {
 public:
  WeightLoader(ModelWeights& model, const CheckpointReader& reader) : model_(model), reader_(reader) {}

  WeightMatrix matrix(const std::string& name, int64_t rows, int64_t cols) {
    const TensorView* found = reader_.find(name);
    if (!found) fail("{}: missing tensor {}", reader_.dir(), name);
    WeightMatrix w;
    w.rows = rows;
    w.cols = cols;
    switch (found->dtype) {
      case DType::F32:
      case DType::BF16: {
        const TensorView& tensor = require(name, {rows, cols});
        w.format = tensor.dtype == DType::F32 ? WeightFormat::F32 : WeightFormat::BF16;
        w.data = aligned_or_copied(tensor);
        return w;
      }
      case DType::F16:
        w.data = widen(require(name, {rows, cols}));
        return w;
      case DType::F8_E4M3:
        w.data = dequantize_fp8(require(name, {rows, cols}), name, rows, cols);
        return w;
      case DType::Q8_0:
      case DType::Q4_0:  // GGUF blocks, read in place
        if (cols % kGgmlBlock != 0) fail("{}: tensor {}: {} columns are not whole blocks of 32", found->file, name, cols);
        w.format = found->dtype == DType::Q8_0 ? WeightFormat::Q8_0 : WeightFormat::Q4_0;
        w.data = require(name, {rows, cols}).data;
        return w;
      case DType::I8:
        return int8_matrix(name, w);
      case DType::U8:
        return packed_matrix(name, w);
      default:
        fail("{}: tensor {}: dtype {} cannot hold weights", found->file, name, dtype_name(found->dtype));
    }
  }

  // Any float dtype, widened to an owned f32 buffer.
  const float* vector(const std::string& name, int64_t size) { return widen(require(name, {size})); }

  WeightMatrix f32_matrix(const std::string& name, int64_t rows, int64_t cols) {
    WeightMatrix w;
    w.data = widen(require(name, {rows, cols}));
    w.rows = rows;
    w.cols = cols;
    return w;
  }

  bool has(const std::string& name) const { return reader_.find(name) != nullptr; }
  // Marks a tensor as known but unused, so it is not reported as unknown.
  void skip(const std::string& name) { used_.insert(name); }

  std::vector<std::string> unused_names() const {
    std::vector<std::string> unused;
    for (const auto& [name, tensor] : reader_.tensors()) {
      if (used_.count(name) || is_extra_layer(name)) continue;
      unused.push_back(name);
    }
    return unused;
  }

  float* own_f32(size_t n) { return model_.owned_f32_.emplace_back(n).data(); }
  uint16_t* own_bf16(size_t n) { return model_.owned_bf16_.emplace_back(n).data(); }

 private:
  const TensorView& require(const std::string& name, std::vector<int64_t> shape) {
    const TensorView* tensor = reader_.find(name);
    if (!tensor) fail("{}: missing tensor {}", reader_.dir(), name);
    if (tensor->shape != shape)
      fail("{}: tensor {}: expected shape [{}], found [{}]", tensor->file, name,
           fmt::join(shape, ", "), fmt::join(tensor->shape, ", "));
    used_.insert(name);
    return *tensor;
  }

  // Layers past num_hidden_layers are multi-token-prediction modules: not part of this pass.
  bool is_extra_layer(const std::string& name) const {
    int layer = -1;
    if (std::sscanf(name.c_str(), "model.layers.%d.", &layer) != 1) return false;
    return layer >= model_.config.num_hidden_layers;
  }

  // Zero copy unless the file puts the tensor at an address its dtype cannot be read from.
  const void* aligned_or_copied(const TensorView& tensor) {
    if (reinterpret_cast<uintptr_t>(tensor.data) % dtype_size(tensor.dtype) == 0) return tensor.data;
    if (tensor.dtype == DType::F32) {
      float* copy = own_f32(size_t(tensor.numel()));
      std::memcpy(copy, tensor.data, tensor.n_bytes);
      return copy;
    }
    uint16_t* copy = own_bf16(size_t(tensor.numel()));
    std::memcpy(copy, tensor.data, tensor.n_bytes);
    return copy;
  }

  const float* widen(const TensorView& tensor) {
    if (tensor.dtype != DType::F32 && tensor.dtype != DType::BF16 && tensor.dtype != DType::F16 &&
        tensor.dtype != DType::F8_E4M3 && tensor.dtype != DType::Q8_0 && tensor.dtype != DType::Q4_0)
      fail("{}: tensor {}: dtype {} is not a float type", tensor.file, tensor.name, dtype_name(tensor.dtype));
    float* out = own_f32(size_t(tensor.numel()));
    // memcpy through a bounce buffer keeps unaligned 2- and 4-byte reads defined.
    std::vector<uint8_t> bounce(tensor.data, tensor.data + tensor.n_bytes);
    decode_to_f32(tensor.dtype, bounce.data(), out, tensor.numel());
    return out;
  }

  // DeepSeek-V3 ships FP8 e4m3 weights with one f32 scale per 128x128 block (weight_scale_inv).
  const float* dequantize_fp8(const TensorView& tensor, const std::string& name, int64_t rows, int64_t cols) {
    constexpr int64_t kBlock = 128;
    const std::string scale_name = name.substr(0, name.size() - std::string(".weight").size()) +
                                   ".weight_scale_inv";
    if (!has(scale_name)) fail("{}: tensor {} is FP8 but {} is missing", tensor.file, name, scale_name);
    const int64_t block_rows = (rows + kBlock - 1) / kBlock, block_cols = (cols + kBlock - 1) / kBlock;
    const float* scales = widen(require(scale_name, {block_rows, block_cols}));
    float* out = const_cast<float*>(widen(tensor));
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) out[r * cols + c] *= scales[(r / kBlock) * block_cols + c / kBlock];
    return out;
  }

  static std::string stem(const std::string& name) { return name.substr(0, name.size() - std::string(".weight").size()); }

  // Int8 [rows, cols] with `.weight_scale` f32 [rows]; for W8A8 also the activations' scheme.
  WeightMatrix int8_matrix(const std::string& name, WeightMatrix w) {
    const TensorView& tensor = require(name, {w.rows, w.cols});
    w.format = WeightFormat::Int8;
    w.data = tensor.data;
    w.row_scales = vector(stem(name) + ".weight_scale", w.rows);
    const std::string activations = model_.config.quantization ? model_.config.quantization->activations : "none";
    if (activations == "none") return w;
    int32_t* sums = own_i32(size_t(w.rows));
    for (int64_t r = 0; r < w.rows; ++r) {
      int32_t sum = 0;
      for (int64_t k = 0; k < w.cols; ++k) sum += int8_t(tensor.data[r * w.cols + k]);
      sums[r] = sum;
    }
    w.row_sums = sums;
    w.activation_quant = activations == "dynamic" ? ActivationQuant::Dynamic : ActivationQuant::Static;
    if (w.activation_quant == ActivationQuant::Static) {
      w.activation_scale = vector(stem(name) + ".input_scale", 1)[0];
      const TensorView& zero = require(stem(name) + ".input_zero_point", {1});
      if (zero.dtype != DType::I32) fail("{}: {}.input_zero_point must be I32", zero.file, stem(name));
      std::memcpy(&w.activation_zero_point, zero.data, 4);
      if (!(w.activation_scale > 0) || w.activation_zero_point < 0 || w.activation_zero_point > 255)
        fail("{}: {}: input_scale must be positive and input_zero_point in [0, 255]", zero.file, stem(name));
    }
    return w;
  }

  // U8 tensors: ggml blocks (q8_0, q4_0) or Int4 nibbles, as quantization_config says.
  WeightMatrix packed_matrix(const std::string& name, WeightMatrix w) {
    const TensorView& found = *reader_.find(name);
    if (!model_.config.quantization) fail("{}: tensor {} is U8 but config.json has no quantization_config", found.file, name);
    const std::string& format = model_.config.quantization->format;
    if (format == "q8_0" || format == "q4_0") {
      if (w.cols % kGgmlBlock != 0) fail("{}: tensor {}: {} columns are not whole blocks of 32", found.file, name, w.cols);
      w.format = format == "q8_0" ? WeightFormat::Q8_0 : WeightFormat::Q4_0;
      w.data = require(name, {w.rows, int64_t(w.row_bytes())}).data;
      return w;
    }
    if (!format.starts_with("w4")) fail("{}: tensor {} is U8 but the format is {}", found.file, name, format);
    w.format = WeightFormat::Int4;
    w.data = require(name, {w.rows, w.cols / 2}).data;
    const TensorView* scales = reader_.find(stem(name) + ".weight_scale");
    if (!scales || scales->dtype != DType::F16 || scales->shape.size() != 2 || scales->shape[0] != w.rows ||
        scales->shape[1] < 1 || w.cols % scales->shape[1] != 0 || (w.cols / scales->shape[1]) % kInt4Chunk != 0)
      fail("{}: tensor {} needs {}.weight_scale, F16 [{}, groups] with groups of a multiple of 32 columns", found.file,
           name, stem(name), w.rows);
    w.group = w.cols / scales->shape[1];
    w.group_scales = static_cast<const uint16_t*>(aligned_or_copied(require(scales->name, scales->shape)));
    if (has(stem(name) + ".weight_zero_point"))
      w.zero_points = require(stem(name) + ".weight_zero_point", scales->shape).data;
    return w;
  }

  int32_t* own_i32(size_t n) { return model_.owned_i32_.emplace_back(n).data(); }

  ModelWeights& model_;
  const CheckpointReader& reader_;
  std::set<std::string> used_;
};

namespace {

MlpWeights load_mlp(WeightLoader& loader, const std::string& prefix, int64_t hidden, int64_t intermediate) {
  return {loader.matrix(prefix + "gate_proj.weight", intermediate, hidden),
          loader.matrix(prefix + "up_proj.weight", intermediate, hidden),
          loader.matrix(prefix + "down_proj.weight", hidden, intermediate)};
}

// Per head h: rows [h*(nope+v), h*(nope+v)+nope) of kv_b_proj ([.., kv_lora]) transposed to
// [kv_lora, nope], heads stacked. Same dtype as kv_b_proj so decode reads no more bytes.
WeightMatrix transpose_key_up_projection(WeightLoader& loader, const Config& c, const WeightMatrix& kv_b) {
  const int64_t heads = c.num_attention_heads, nope = c.qk_nope_head_dim, rank = c.kv_lora_rank;
  const int64_t per_head = nope + c.v_head_dim;
  WeightMatrix out;
  out.format = kv_b.format;
  out.rows = heads * rank;
  out.cols = nope;
  auto transpose = [&](auto* dst, const auto* src) {
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t d = 0; d < nope; ++d)
        for (int64_t r = 0; r < rank; ++r) dst[(h * rank + r) * nope + d] = src[(h * per_head + d) * rank + r];
  };
  const size_t n = size_t(heads * rank * nope);
  if (kv_b.format == WeightFormat::BF16) {
    uint16_t* dst = loader.own_bf16(n);
    transpose(dst, static_cast<const uint16_t*>(kv_b.data));
    out.data = dst;
  } else {  // F32, or a quantized kv_b_proj read through its f32 values
    const float* source = static_cast<const float*>(kv_b.data);
    if (kv_b.format != WeightFormat::F32) {
      float* widened = loader.own_f32(size_t(kv_b.rows * kv_b.cols));
      dequantize_rows(kv_b, 0, kv_b.rows, widened);
      source = widened;
    }
    float* dst = loader.own_f32(n);
    transpose(dst, source);
    out.data = dst;
    out.format = WeightFormat::F32;
  }
  return out;
}

}  // namespace

std::unique_ptr<ModelWeights> ModelWeights::load(const std::string& model_dir, LoadOptions load) {
  auto model = std::make_unique<ModelWeights>();
  if (is_gguf_path(model_dir)) {
    GgufCheckpoint gguf = import_gguf(model_dir, load);
    model->config = gguf.config;
    model->config_json = gguf.config_json;
    model->reader_ = std::move(gguf.reader);
  } else {
    const std::string config_path = (std::filesystem::path(model_dir) / "config.json").string();
    model->config = load_config(config_path);
    model->config_json = read_text_file(config_path);
    model->reader_ = std::make_unique<CheckpointReader>(model_dir, load);
  }
  const Config& c = model->config;
  WeightLoader loader(*model, *model->reader_);

  const int64_t hidden = c.hidden_size, heads = c.num_attention_heads;
  model->embed_tokens = loader.matrix("model.embed_tokens.weight", c.vocab_size, hidden);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string prefix = fmt::format("model.layers.{}.", i);
    LayerWeights& layer = model->layers.emplace_back();
    layer.input_layernorm = loader.vector(prefix + "input_layernorm.weight", hidden);
    layer.post_attention_layernorm = loader.vector(prefix + "post_attention_layernorm.weight", hidden);

    MlaWeights& attn = layer.self_attn;
    const std::string a = prefix + "self_attn.";
    if (c.q_lora_rank) {
      attn.q_a_proj = loader.matrix(a + "q_a_proj.weight", *c.q_lora_rank, hidden);
      attn.q_a_layernorm = loader.vector(a + "q_a_layernorm.weight", *c.q_lora_rank);
      attn.q_b_proj = loader.matrix(a + "q_b_proj.weight", heads * c.qk_head_dim(), *c.q_lora_rank);
    } else {
      attn.q_proj = loader.matrix(a + "q_proj.weight", heads * c.qk_head_dim(), hidden);
    }
    attn.kv_a_proj_with_mqa =
        loader.matrix(a + "kv_a_proj_with_mqa.weight", c.kv_lora_rank + c.qk_rope_head_dim, hidden);
    attn.kv_a_layernorm = loader.vector(a + "kv_a_layernorm.weight", c.kv_lora_rank);
    attn.o_proj = loader.matrix(a + "o_proj.weight", hidden, heads * c.v_head_dim);
    const int64_t nope = c.qk_nope_head_dim, v_dim = c.v_head_dim;
    if (loader.has(a + "k_b_proj.weight")) {  // a GGUF's attn_k_b / attn_v_b (see gguf_import.h)
      attn.kv_b_proj_keys_transposed = loader.matrix(a + "k_b_proj.weight", heads * c.kv_lora_rank, nope);
      attn.kv_b_proj_values = loader.matrix(a + "v_b_proj.weight", heads * v_dim, c.kv_lora_rank);
      attn.values_head_stride = v_dim;
      attn.values_head_offset = 0;
    } else {
      const std::vector<int64_t> shape = kv_b_proj_shape(c);
      attn.kv_b_proj = loader.matrix(a + "kv_b_proj.weight", shape[0], shape[1]);
      attn.kv_b_proj_keys_transposed = transpose_key_up_projection(loader, c, attn.kv_b_proj);
      attn.kv_b_proj_values = attn.kv_b_proj;
      attn.values_head_stride = nope + v_dim;
      attn.values_head_offset = nope;
    }

    const std::string m = prefix + "mlp.";
    layer.is_moe = c.is_moe_layer(i);
    if (!layer.is_moe) {
      layer.mlp = load_mlp(loader, m, hidden, c.intermediate_size);
      continue;
    }
    MoeWeights& moe = layer.moe;
    moe.gate = loader.f32_matrix(m + "gate.weight", c.n_routed_experts, hidden);
    if (c.topk_method == TopkMethod::NoauxTc)
      moe.e_score_correction_bias = loader.vector(m + "gate.e_score_correction_bias", c.n_routed_experts);
    for (int64_t e = 0; e < c.n_routed_experts; ++e)
      moe.experts.push_back(load_mlp(loader, fmt::format("{}experts.{}.", m, e), hidden, c.moe_intermediate_size));
    moe.has_shared_experts = c.n_shared_experts > 0;
    if (moe.has_shared_experts)
      moe.shared_experts =
          load_mlp(loader, m + "shared_experts.", hidden, c.moe_intermediate_size * c.n_shared_experts);
  }
  model->norm = loader.vector("model.norm.weight", hidden);
  if (c.tie_word_embeddings) {
    // As HF ties them: the embedding is the head, and a stored lm_head.weight is not used.
    model->lm_head = model->embed_tokens;
    loader.skip("lm_head.weight");
  } else {
    model->lm_head = loader.matrix("lm_head.weight", c.vocab_size, hidden);
  }
  model->ignored_tensors = loader.unused_names();
  return model;
}

std::vector<float> join_kv_b_proj(const Config& c, const MlaWeights& w) {
  const int64_t heads = c.num_attention_heads, nope = c.qk_nope_head_dim, v = c.v_head_dim, rank = c.kv_lora_rank;
  std::vector<float> keys(size_t(heads * rank * nope)), out(size_t(heads * (nope + v) * rank));
  dequantize_rows(w.kv_b_proj_keys_transposed, 0, heads * rank, keys.data());
  for (int64_t h = 0; h < heads; ++h) {
    float* head = out.data() + h * (nope + v) * rank;
    for (int64_t d = 0; d < nope; ++d)
      for (int64_t r = 0; r < rank; ++r) head[d * rank + r] = keys[size_t((h * rank + r) * nope + d)];
    dequantize_rows(w.kv_b_proj_values, h * w.values_head_stride + w.values_head_offset, v, head + nope * rank);
  }
  return out;
}

std::vector<int64_t> kv_b_proj_shape(const Config& c) {
  return {c.num_attention_heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank};
}

std::vector<std::pair<std::string, const MlaWeights*>> ModelWeights::kv_b_proj_to_join() const {
  std::vector<std::pair<std::string, const MlaWeights*>> out;
  for (size_t i = 0; i < layers.size(); ++i)
    if (!layers[i].self_attn.kv_b_proj.data)
      out.emplace_back(fmt::format("model.layers.{}.self_attn.kv_b_proj.weight", i), &layers[i].self_attn);
  return out;
}

std::vector<std::pair<std::string, const WeightMatrix*>> ModelWeights::named_matrices() const {
  std::vector<std::pair<std::string, const WeightMatrix*>> out;
  auto add = [&](const std::string& name, const WeightMatrix& w) {
    if (w.data) out.emplace_back(name, &w);
  };
  auto add_mlp = [&](const std::string& prefix, const MlpWeights& mlp) {
    add(prefix + "gate_proj.weight", mlp.gate_proj);
    add(prefix + "up_proj.weight", mlp.up_proj);
    add(prefix + "down_proj.weight", mlp.down_proj);
  };
  add("model.embed_tokens.weight", embed_tokens);
  for (size_t i = 0; i < layers.size(); ++i) {
    const LayerWeights& layer = layers[i];
    const std::string a = fmt::format("model.layers.{}.self_attn.", i), m = fmt::format("model.layers.{}.mlp.", i);
    const MlaWeights& attn = layer.self_attn;
    add(a + "q_proj.weight", attn.q_proj);
    add(a + "q_a_proj.weight", attn.q_a_proj);
    add(a + "q_b_proj.weight", attn.q_b_proj);
    add(a + "kv_a_proj_with_mqa.weight", attn.kv_a_proj_with_mqa);
    add(a + "kv_b_proj.weight", attn.kv_b_proj);
    add(a + "o_proj.weight", attn.o_proj);
    if (!layer.is_moe) {
      add_mlp(m, layer.mlp);
      continue;
    }
    add(m + "gate.weight", layer.moe.gate);
    for (size_t e = 0; e < layer.moe.experts.size(); ++e) add_mlp(fmt::format("{}experts.{}.", m, e), layer.moe.experts[e]);
    if (layer.moe.has_shared_experts) add_mlp(m + "shared_experts.", layer.moe.shared_experts);
  }
  if (lm_head.data != embed_tokens.data) add("lm_head.weight", lm_head);
  return out;
}

int64_t ModelWeights::parameter_count() const {
  const Config& c = config;
  auto mlp_params = [&](int64_t intermediate) { return 3 * c.hidden_size * intermediate; };
  int64_t total = c.vocab_size * c.hidden_size * (lm_head.data == embed_tokens.data ? 1 : 2) + c.hidden_size;
  for (const auto& layer : layers) {
    const MlaWeights& a = layer.self_attn;
    total += 2 * c.hidden_size;
    for (const WeightMatrix* w : {&a.q_proj, &a.q_a_proj, &a.q_b_proj, &a.kv_a_proj_with_mqa, &a.o_proj})
      total += w->rows * w->cols;
    const std::vector<int64_t> kv_b = kv_b_proj_shape(c);  // stored whole or as its two halves
    total += kv_b[0] * kv_b[1];
    total += (c.q_lora_rank ? *c.q_lora_rank : 0) + c.kv_lora_rank;
    if (!layer.is_moe) {
      total += mlp_params(c.intermediate_size);
    } else {
      total += c.n_routed_experts * (c.hidden_size + mlp_params(c.moe_intermediate_size));
      total += mlp_params(c.moe_intermediate_size * c.n_shared_experts);
    }
  }
  return total;
}

int64_t ModelWeights::active_parameter_count() const {
  const Config& c = config;
  const int64_t inactive_experts = c.n_routed_experts - c.num_experts_per_tok;
  int64_t moe_layers = 0;
  for (const auto& layer : layers) moe_layers += layer.is_moe;
  return parameter_count() - moe_layers * inactive_experts * 3 * c.hidden_size * c.moe_intermediate_size;
}

size_t ModelWeights::weight_bytes() const {
  size_t bytes = 0;
  for (const auto& [name, tensor] : reader_->tensors()) bytes += tensor.n_bytes;
  for (const auto& buffer : owned_f32_) bytes += buffer.size() * sizeof(float);
  for (const auto& buffer : owned_bf16_) bytes += buffer.size() * sizeof(uint16_t);
  for (const auto& buffer : owned_i32_) bytes += buffer.size() * sizeof(int32_t);
  return bytes;
}

std::string ModelWeights::file_residence() const {
  bool read = false, mapped = false, locked = true;
  for (const auto& file : reader_->files()) {
    (file->read_into_memory() ? read : mapped) = true;
    locked = locked && file->locked();
  }
  std::string out = read && mapped ? "read into memory and mmap" : read ? "read into memory" : "mmap";
  return locked && !reader_->files().empty() ? out + ", locked" : out;
}

size_t ModelWeights::decode_weight_bytes() const {
  const Config& c = config;
  auto mlp_bytes = [](const MlpWeights& w) { return w.gate_proj.bytes() + w.up_proj.bytes() + w.down_proj.bytes(); };
  size_t bytes = lm_head.bytes() + embed_tokens.row_bytes();
  for (const auto& layer : layers) {
    const MlaWeights& a = layer.self_attn;
    // Absorbed decode reads the transposed key half plus the value half of kv_b_proj.
    const size_t value_half = a.kv_b_proj_values.data == a.kv_b_proj.data
                                  ? a.kv_b_proj.bytes() - a.kv_b_proj_keys_transposed.bytes()
                                  : a.kv_b_proj_values.bytes();
    bytes += a.q_proj.bytes() + a.q_a_proj.bytes() + a.q_b_proj.bytes() + a.kv_a_proj_with_mqa.bytes() +
             a.kv_b_proj_keys_transposed.bytes() + value_half + a.o_proj.bytes();
    if (!layer.is_moe) {
      bytes += mlp_bytes(layer.mlp);
      continue;
    }
    bytes += layer.moe.gate.bytes() + size_t(c.num_experts_per_tok) * mlp_bytes(layer.moe.experts[0]);
    if (layer.moe.has_shared_experts) bytes += mlp_bytes(layer.moe.shared_experts);
  }
  return bytes;
}

int64_t ModelWeights::round_to_bf16() {
  std::vector<WeightMatrix*> matrices = {&embed_tokens, &lm_head};
  auto add_mlp = [&](MlpWeights& mlp) {
    for (WeightMatrix* w : {&mlp.gate_proj, &mlp.up_proj, &mlp.down_proj}) matrices.push_back(w);
  };
  for (LayerWeights& layer : layers) {
    MlaWeights& a = layer.self_attn;
    for (WeightMatrix* w : {&a.q_proj, &a.q_a_proj, &a.q_b_proj, &a.kv_a_proj_with_mqa, &a.kv_b_proj,
                            &a.kv_b_proj_keys_transposed, &a.kv_b_proj_values, &a.o_proj})
      matrices.push_back(w);
    if (!layer.is_moe) {
      add_mlp(layer.mlp);
      continue;
    }
    for (MlpWeights& expert : layer.moe.experts) add_mlp(expert);  // the router (moe.gate) stays f32
    if (layer.moe.has_shared_experts) add_mlp(layer.moe.shared_experts);
  }
  std::map<std::pair<const void*, int64_t>, const uint16_t*> rounded;  // by source data and size: aliases stay aliases
  int64_t count = 0;
  for (WeightMatrix* w : matrices) {
    if (!w->data || w->format != WeightFormat::F32) continue;
    const int64_t n = w->rows * w->cols;
    const uint16_t*& bits = rounded[{w->data, n}];
    if (!bits) {
      std::vector<uint16_t>& buffer = owned_bf16_.emplace_back(size_t(n));
      const auto* values = static_cast<const float*>(w->data);
      for (int64_t i = 0; i < n; ++i) buffer[size_t(i)] = f32_to_bf16(values[i]);
      bits = buffer.data();
      ++count;
    }
    w->format = WeightFormat::BF16;
    w->data = bits;
  }
  return count;
}

}  // namespace deepmoe
