#include "model/weights.h"

#include <fmt/format.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <set>

#include "core/error.h"
#include "model/gguf_import.h"

namespace deepmoe {

// Fetches tensors by name with shape checks, records which names were used, and owns what it
// had to widen. One instance per load.
class WeightLoader {
 public:
  WeightLoader(ModelWeights& model, const CheckpointReader& reader) : model_(model), reader_(reader) {}

  WeightMatrix matrix(const std::string& name, int64_t rows, int64_t cols) {
    const TensorView& tensor = require(name, {rows, cols});
    WeightMatrix w{DType::F32, nullptr, rows, cols};
    switch (tensor.dtype) {
      case DType::F32:
      case DType::BF16:
        w.dtype = tensor.dtype;
        w.data = aligned_or_copied(tensor);
        return w;
      case DType::F16:
        w.data = widen(tensor);
        return w;
      case DType::F8_E4M3:
        w.data = dequantize_fp8(tensor, name, rows, cols);
        return w;
      default:
        fail("{}: tensor {}: dtype {} cannot hold weights", tensor.file, name, dtype_name(tensor.dtype));
    }
  }

  // Any float dtype, widened to an owned f32 buffer.
  const float* vector(const std::string& name, int64_t size) { return widen(require(name, {size})); }

  WeightMatrix f32_matrix(const std::string& name, int64_t rows, int64_t cols) {
    return {DType::F32, widen(require(name, {rows, cols})), rows, cols};
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
        tensor.dtype != DType::F8_E4M3)
      fail("{}: tensor {}: dtype {} is not a float type", tensor.file, tensor.name, dtype_name(tensor.dtype));
    float* out = own_f32(size_t(tensor.numel()));
    if (tensor.dtype == DType::F32 || tensor.dtype == DType::F16 || tensor.dtype == DType::BF16) {
      // memcpy through a bounce buffer keeps unaligned 2- and 4-byte reads defined.
      std::vector<uint8_t> bounce(tensor.data, tensor.data + tensor.n_bytes);
      convert_to_f32(tensor.dtype, bounce.data(), out, size_t(tensor.numel()));
    } else {
      convert_to_f32(tensor.dtype, tensor.data, out, size_t(tensor.numel()));
    }
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
  WeightMatrix out{kv_b.dtype, nullptr, heads * rank, nope};
  auto transpose = [&](auto* dst, const auto* src) {
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t d = 0; d < nope; ++d)
        for (int64_t r = 0; r < rank; ++r) dst[(h * rank + r) * nope + d] = src[(h * per_head + d) * rank + r];
  };
  const size_t n = size_t(heads * rank * nope);
  if (kv_b.dtype == DType::F32) {
    float* dst = loader.own_f32(n);
    transpose(dst, static_cast<const float*>(kv_b.data));
    out.data = dst;
  } else {
    uint16_t* dst = loader.own_bf16(n);
    transpose(dst, static_cast<const uint16_t*>(kv_b.data));
    out.data = dst;
  }
  return out;
}

}  // namespace

std::unique_ptr<ModelWeights> ModelWeights::load(const std::string& model_dir) {
  auto model = std::make_unique<ModelWeights>();
  if (is_gguf_path(model_dir)) {
    GgufCheckpoint gguf = import_gguf(model_dir);
    model->config = gguf.config;
    model->reader_ = std::move(gguf.reader);
  } else {
    model->config = load_config((std::filesystem::path(model_dir) / "config.json").string());
    model->reader_ = std::make_unique<CheckpointReader>(model_dir);
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
    attn.kv_b_proj =
        loader.matrix(a + "kv_b_proj.weight", heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank);
    attn.o_proj = loader.matrix(a + "o_proj.weight", hidden, heads * c.v_head_dim);
    attn.kv_b_proj_keys_transposed = transpose_key_up_projection(loader, c, attn.kv_b_proj);

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

int64_t ModelWeights::parameter_count() const {
  const Config& c = config;
  auto mlp_params = [&](int64_t intermediate) { return 3 * c.hidden_size * intermediate; };
  int64_t total = c.vocab_size * c.hidden_size * (lm_head.data == embed_tokens.data ? 1 : 2) + c.hidden_size;
  for (const auto& layer : layers) {
    const MlaWeights& a = layer.self_attn;
    total += 2 * c.hidden_size;
    for (const WeightMatrix* w : {&a.q_proj, &a.q_a_proj, &a.q_b_proj, &a.kv_a_proj_with_mqa, &a.kv_b_proj, &a.o_proj})
      total += w->rows * w->cols;
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
  return bytes;
}

size_t ModelWeights::decode_weight_bytes() const {
  const Config& c = config;
  auto mlp_bytes = [](const MlpWeights& w) { return w.gate_proj.bytes() + w.up_proj.bytes() + w.down_proj.bytes(); };
  size_t bytes = lm_head.bytes() + size_t(c.hidden_size) * dtype_size(embed_tokens.dtype);
  for (const auto& layer : layers) {
    const MlaWeights& a = layer.self_attn;
    // Absorbed decode reads the transposed key half plus the value half of kv_b_proj.
    bytes += a.q_proj.bytes() + a.q_a_proj.bytes() + a.q_b_proj.bytes() + a.kv_a_proj_with_mqa.bytes() +
             a.kv_b_proj.bytes() + a.o_proj.bytes();
    if (!layer.is_moe) {
      bytes += mlp_bytes(layer.mlp);
      continue;
    }
    bytes += layer.moe.gate.bytes() + size_t(c.num_experts_per_tok) * mlp_bytes(layer.moe.experts[0]);
    if (layer.moe.has_shared_experts) bytes += mlp_bytes(layer.moe.shared_experts);
  }
  return bytes;
}

}  // namespace deepmoe
