#include "model/weights.h"

#include <fmt/format.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>

#include "core/dtype.h"
#include "core/error.h"
#include "io/mapped_file.h"
#include "kernels/ggml_blocks.h"
#include "kernels/quantize.h"
#include "model/gguf_import.h"
#include "model/tensor_list.h"

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
      case DType::F16: w.data = widen(require(name, {rows, cols})); return w;
      case DType::F8_E4M3: w.data = dequantize_fp8(require(name, {rows, cols}), name, rows, cols); return w;
      case DType::Q8_0:
      case DType::Q4_0:  // GGUF blocks, read in place
        if (cols % kGgmlBlock != 0)
          fail("{}: tensor {}: {} columns are not whole blocks of 32", found->file, name, cols);
        w.format = found->dtype == DType::Q8_0 ? WeightFormat::Q8_0 : WeightFormat::Q4_0;
        w.data = require(name, {rows, cols}).data;
        return w;
      case DType::I8: return int8_matrix(name, w);
      case DType::U8: return packed_matrix(name, w);
      default: fail("{}: tensor {}: dtype {} cannot hold weights", found->file, name, dtype_name(found->dtype));
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

 private:
  float* own_f32(size_t n) { return model_.owned_f32_.emplace_back(n).data(); }
  uint16_t* own_bf16(size_t n) { return model_.owned_bf16_.emplace_back(n).data(); }

  const TensorView& require(const std::string& name, std::vector<int64_t> shape) {
    const TensorView* tensor = reader_.find(name);
    if (!tensor) fail("{}: missing tensor {}", reader_.dir(), name);
    if (tensor->shape != shape)
      fail("{}: tensor {}: expected shape [{}], found [{}]", tensor->file, name, fmt::join(shape, ", "),
           fmt::join(tensor->shape, ", "));
    used_.insert(name);
    return *tensor;
  }

  // Layers past those the config counts: MTP modules the checkpoint holds only in part (or more of
  // them than its config names), not loaded.
  bool is_extra_layer(const std::string& name) const {
    int layer = -1;
    if (std::sscanf(name.c_str(), "model.layers.%d.", &layer) != 1) return false;
    return layer >= model_.config.layer_count();
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
    const std::string scale_name = name.substr(0, name.size() - std::string(".weight").size()) + ".weight_scale_inv";
    if (!has(scale_name)) fail("{}: tensor {} is FP8 but {} is missing", tensor.file, name, scale_name);
    const int64_t block_rows = (rows + kBlock - 1) / kBlock, block_cols = (cols + kBlock - 1) / kBlock;
    const float* scales = widen(require(scale_name, {block_rows, block_cols}));
    float* out = const_cast<float*>(widen(tensor));
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) out[r * cols + c] *= scales[(r / kBlock) * block_cols + c / kBlock];
    return out;
  }

  static std::string stem(const std::string& name) {
    return name.substr(0, name.size() - std::string(".weight").size());
  }

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
    if (!model_.config.quantization)
      fail("{}: tensor {} is U8 but config.json has no quantization_config", found.file, name);
    const std::string& format = model_.config.quantization->format;
    if (format == "q8_0" || format == "q4_0") {
      if (w.cols % kGgmlBlock != 0)
        fail("{}: tensor {}: {} columns are not whole blocks of 32", found.file, name, w.cols);
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
  const CheckpointReader& reader = *model->reader_;
  model->config.num_nextn_predict_layers =
      mtp_modules_held(model->config, [&](const std::string& name) { return reader.find(name) != nullptr; });
  const Config& c = model->config;
  if (const auto missing = first_missing_tensor(c, int64_t(reader.tensors().size()),
                                                [&](const TensorInfo& t) { return reader.find(t.hf_name) != nullptr; }))
    fail("{}: missing tensor {}", model_dir, missing->hf_name);
  WeightLoader loader(*model, *model->reader_);
  for_each_tensor(c, *model, [&](const TensorInfo& t, TensorSlot slot) {
    if (slot.vector) {
      *slot.vector = loader.vector(t.hf_name, t.shape[0]);
    } else if (t.role == TensorRole::Router) {
      *slot.matrix = loader.f32_matrix(t.hf_name, t.shape[0], t.shape[1]);  // HF routes in f32
    } else if (t.gguf_form == GgufForm::SplitKvB && loader.has(kv_b_proj_halves(t.layer).hf_keys)) {
      // A GGUF's attn_k_b / attn_v_b (see gguf_import.h): bound as they are, kv_b_proj stays empty.
      const KvBHalves halves = kv_b_proj_halves(t.layer);
      MlaWeights& attn = model->layers[size_t(t.layer)].self_attn;
      attn.kv_b_proj_keys_transposed =
          loader.matrix(halves.hf_keys, c.num_attention_heads * c.kv_lora_rank, c.qk_nope_head_dim);
      attn.kv_b_proj_values = loader.matrix(halves.hf_values, c.num_attention_heads * c.v_head_dim, c.kv_lora_rank);
    } else {
      *slot.matrix = loader.matrix(t.hf_name, t.shape[0], t.shape[1]);
    }
  });
  // As HF ties them: the embedding is the head, and a stored lm_head.weight is not used.
  if (c.tie_word_embeddings) loader.skip(lm_head_info(c).hf_name);
  for (int64_t d = 0; d < c.num_nextn_predict_layers; ++d)
    for (const std::string& copy : mtp_shared_copies(c.num_hidden_layers + d)) loader.skip(copy);
  model->derive_matrices(true);
  model->ignored_tensors = loader.unused_names();
  return model;
}

void ModelWeights::derive_matrices(bool with_transposed_keys) {
  const Config& c = config;
  if (c.tie_word_embeddings) lm_head = embed_tokens;
  for (LayerWeights& layer : layers) {
    MlaWeights& attn = layer.self_attn;
    if (!attn.kv_b_proj.data) {  // a GGUF's halves: values [heads·v, kv_lora_rank]
      attn.values_head_stride = c.v_head_dim;
      attn.values_head_offset = 0;
      continue;
    }
    attn.kv_b_proj_values = attn.kv_b_proj;
    attn.values_head_stride = c.qk_nope_head_dim + c.v_head_dim;
    attn.values_head_offset = c.qk_nope_head_dim;
    if (with_transposed_keys) attn.kv_b_proj_keys_transposed = transpose_key_up_projection(attn.kv_b_proj);
  }
}

// Per head h: rows [h*(nope+v), h*(nope+v)+nope) of kv_b_proj ([.., kv_lora]) transposed to
// [kv_lora, nope], heads stacked. Same dtype as kv_b_proj so decode reads no more bytes.
WeightMatrix ModelWeights::transpose_key_up_projection(const WeightMatrix& kv_b) {
  const Config& c = config;
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
    uint16_t* dst = owned_bf16_.emplace_back(n).data();
    transpose(dst, static_cast<const uint16_t*>(kv_b.data));
    out.data = dst;
  } else {  // F32, or a quantized kv_b_proj read through its f32 values
    const float* source = static_cast<const float*>(kv_b.data);
    if (kv_b.format != WeightFormat::F32) {
      float* widened = owned_f32_.emplace_back(size_t(kv_b.rows * kv_b.cols)).data();
      dequantize_rows(kv_b, 0, kv_b.rows, widened);
      source = widened;
    }
    float* dst = owned_f32_.emplace_back(n).data();
    transpose(dst, source);
    out.data = dst;
    out.format = WeightFormat::F32;
  }
  return out;
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
  for_each_tensor(config, *this, [&](const TensorInfo& t, ConstTensorSlot slot) {
    if (t.gguf_form == GgufForm::SplitKvB && !slot.matrix->data)
      out.emplace_back(t.hf_name, &layers[size_t(t.layer)].self_attn);
  });
  return out;
}

std::vector<std::pair<std::string, const WeightMatrix*>> ModelWeights::named_matrices() const {
  std::vector<std::pair<std::string, const WeightMatrix*>> out;
  for_each_tensor(config, *this, [&](const TensorInfo& t, ConstTensorSlot slot) {
    if (slot.matrix && slot.matrix->data) out.emplace_back(t.hf_name, slot.matrix);
  });
  return out;
}

// From the list's shapes, so kv_b_proj counts whether it is held whole or as its two halves.
int64_t ModelWeights::parameter_count() const {
  int64_t total = 0;
  for (const TensorInfo& t : tensor_list(config))
    if (!t.mtp) total += t.numel();
  return total;
}

int64_t ModelWeights::active_parameter_count() const {
  int64_t total = 0;
  for (const TensorInfo& t : tensor_list(config))
    if (!t.mtp && t.expert < config.num_experts_per_tok) total += t.numel();
  return total;
}

int64_t ModelWeights::mtp_parameter_count() const {
  int64_t total = 0;
  for (const TensorInfo& t : tensor_list(config))
    if (t.mtp) total += t.numel();
  return total;
}

const CheckpointReader& ModelWeights::reader() const {
  if (!reader_) fail("model: a view of f32 values has no checkpoint files");
  return *reader_;
}

size_t ModelWeights::weight_bytes() const {
  size_t bytes = 0;
  if (reader_)
    for (const auto& [name, tensor] : reader_->tensors()) bytes += tensor.n_bytes;
  for (const auto& buffer : owned_f32_) bytes += buffer.size() * sizeof(float);
  for (const auto& buffer : owned_bf16_) bytes += buffer.size() * sizeof(uint16_t);
  for (const auto& buffer : owned_i32_) bytes += buffer.size() * sizeof(int32_t);
  return bytes;
}

std::string ModelWeights::file_residence() const {
  if (!reader_) return "a view of f32 values";
  bool read = false, mapped = false, locked = true;
  for (const auto& file : reader_->files()) {
    (file->read_into_memory() ? read : mapped) = true;
    locked = locked && file->locked();
  }
  std::string out = read && mapped ? "read into memory and mmap" : read ? "read into memory" : "mmap";
  return locked && !reader_->files().empty() ? out + ", locked" : out;
}

size_t ModelWeights::decode_weight_bytes(bool mtp) const {
  size_t bytes = lm_head.bytes();                      // the head, tied or not, reads all of its rows
  const int64_t mtp_layer = config.num_hidden_layers;  // the first module's
  for_each_tensor(config, *this, [&](const TensorInfo& t, ConstTensorSlot slot) {
    if (!slot.matrix || t.role == TensorRole::Head || t.expert >= config.num_experts_per_tok) return;
    if (mtp ? t.role != TensorRole::Embedding && t.layer != mtp_layer : t.mtp) return;
    if (t.role == TensorRole::Embedding) {
      bytes += slot.matrix->row_bytes();  // one row looked up
    } else if (t.gguf_form == GgufForm::SplitKvB) {
      // Absorbed decode reads the transposed key half plus the value half of kv_b_proj.
      const MlaWeights& a = layers[size_t(t.layer)].self_attn;
      const size_t value_half = a.kv_b_proj_values.data == a.kv_b_proj.data
                                    ? a.kv_b_proj.bytes() - a.kv_b_proj_keys_transposed.bytes()
                                    : a.kv_b_proj_values.bytes();
      bytes += a.kv_b_proj_keys_transposed.bytes() + value_half;
    } else {
      bytes += slot.matrix->bytes();
    }
  });
  return bytes;
}

size_t ModelWeights::routed_expert_bytes() const {
  for (const LayerWeights& layer : layers)
    if (layer.is_moe && !layer.moe.experts.empty()) {
      const MlpWeights& e = layer.moe.experts[0];
      return e.gate_proj.bytes() + e.up_proj.bytes() + e.down_proj.bytes();
    }
  return 0;
}

int64_t ModelWeights::round_to_bf16() {
  std::vector<WeightMatrix*> matrices;
  for_each_tensor(config, *this, [&](const TensorInfo& t, TensorSlot slot) {
    if (slot.matrix && t.role != TensorRole::Router) matrices.push_back(slot.matrix);  // the router stays f32
  });
  for (WeightMatrix* derived : derived_matrices()) matrices.push_back(derived);
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

std::vector<WeightMatrix*> ModelWeights::derived_matrices() {
  std::vector<WeightMatrix*> out;
  if (config.tie_word_embeddings) out.push_back(&lm_head);
  for (LayerWeights& layer : layers) {
    out.push_back(&layer.self_attn.kv_b_proj_keys_transposed);
    out.push_back(&layer.self_attn.kv_b_proj_values);
  }
  return out;
}

}  // namespace deepmoe
