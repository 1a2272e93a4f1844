#include "model/quantize_model.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "io/token_windows.h"
#include "kernels/ggml_blocks.h"
#include "model/hf_directory.h"
#include "model/model.h"
#include "model/tensor_list.h"
#include "tokenizer/regex.h"

namespace deepmoe {

namespace {

struct Scheme {
  WeightFormat format;
  int64_t group = 0;
  bool asymmetric = false;
};

Scheme parse_scheme(const std::string& type) {
  if (type == "w8" || type == "w8a8") return {WeightFormat::Int8};
  if (type == "q8_0") return {WeightFormat::Q8_0};
  if (type == "q4_0") return {WeightFormat::Q4_0};
  for (const int64_t group : {32, 64, 128}) {
    if (type == fmt::format("w4g{}", group)) return {WeightFormat::Int4, group, false};
    if (type == fmt::format("w4g{}_asym", group)) return {WeightFormat::Int4, group, true};
  }
  fail("quantize: --type {} is not one of w8, w8a8, w4g32, w4g64, w4g128 (optionally _asym), q8_0, q4_0", type);
}

bool fits(const Scheme& s, int64_t cols) {
  if (s.format == WeightFormat::Int8) return true;
  return cols % (s.format == WeightFormat::Int4 ? s.group : 32) == 0;
}

std::vector<uint8_t> as_bytes(const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  return {p, p + n};
}

template <typename T>
std::vector<uint8_t> vector_bytes(const std::vector<T>& v) {
  return as_bytes(v.data(), v.size() * sizeof(T));
}

// A tensor copied as it is stored (plain dtypes) or decoded to f32 (ggml blocks, which
// safetensors cannot hold).
TensorToProduce copied(const TensorView& view) {
  const bool blocks = view.dtype == DType::Q8_0 || view.dtype == DType::Q4_0;
  TensorToProduce t{view.name, blocks ? DType::F32 : view.dtype, view.shape, {}};
  t.bytes = [&view, blocks] {
    if (!blocks) return as_bytes(view.data, view.n_bytes);
    std::vector<float> values(size_t(view.numel()));
    decode_to_f32(view.dtype, view.data, values.data(), view.numel());
    return vector_bytes(values);
  };
  return t;
}

size_t tensor_bytes(const TensorToProduce& t) {
  int64_t n = 1;
  for (const int64_t d : t.shape) n *= d;
  return dtype_bytes(t.dtype, n);
}

}  // namespace

QuantizeSummary quantize_model(const ModelWeights& model, const std::string& model_path, const QuantizeRequest& request,
                               const std::string& out_dir) {
  const Scheme scheme = parse_scheme(request.type);
  const bool w8a8 = request.type == "w8a8";
  if (w8a8 && request.activations != "static" && request.activations != "dynamic")
    fail("quantize: w8a8 activations must be static or dynamic, not '{}'", request.activations);
  // PCRE2, anchored: the pattern must match a whole tensor name.
  std::optional<Regex> keep;
  if (!request.keep_regex.empty()) {
    try {
      keep.emplace("^(?:" + request.keep_regex + ")$");
    } catch (const Error& e) {
      fail("quantize: --keep '{}' is not a valid regular expression ({})", request.keep_regex, e.what());
    }
  }
  std::vector<std::pair<size_t, size_t>> matches;
  auto kept_by_regex = [&](const std::string& name) {
    matches.clear();
    keep->find_all(name, matches);
    return !matches.empty();
  };

  QuantizeSummary summary;
  std::map<std::string, const WeightMatrix*> to_quantize;
  // Kept by rule: what the list marks not quantizable (embeddings, routers, kv_b_proj).
  for_each_tensor(model.config, model, [&](const TensorInfo& t, ConstTensorSlot slot) {
    if (!slot.matrix || !slot.matrix->data) return;  // vectors; kv_b_proj held as its halves (below)
    if (!t.quantizable) ++summary.kept_by_rule;
    else if (keep && kept_by_regex(t.hf_name)) ++summary.kept_by_regex;
    else if (!fits(scheme, slot.matrix->cols)) ++summary.kept_by_shape;
    else to_quantize[t.hf_name] = slot.matrix;
  });
  if (w8a8 && request.activations == "static")
    for (const auto& [name, w] : to_quantize)
      if (!request.calibration.count(name)) fail("quantize: no calibration range for {}", name);

  // Quantized once per weight, for its two to four output tensors written one after another.
  struct Cache {
    std::string name;
    QuantizedMatrix q;
  };
  auto cache = std::make_shared<Cache>();
  auto quantized = [cache, scheme](const std::string& name, const WeightMatrix* w) -> const QuantizedMatrix& {
    if (cache->name != name) {
      std::vector<float> values(size_t(w->rows * w->cols));
      dequantize_rows(*w, 0, w->rows, values.data());
      cache->q = quantize_matrix(values.data(), w->rows, w->cols, scheme.format, scheme.group, scheme.asymmetric);
      cache->name = name;
    }
    return cache->q;
  };

  std::vector<TensorToProduce> tensors;
  // Plain loop variables: lambdas below capture them (clang 14 cannot capture structured bindings).
  for (const auto& entry : model.reader().tensors()) {
    const std::string& name = entry.first;
    const TensorView& view = entry.second;
    summary.bytes_before += view.n_bytes;
    if (view.derived) continue;  // written as the HF tensor it is part of, below
    const auto it = to_quantize.find(name);
    if (it == to_quantize.end()) {
      tensors.push_back(copied(view));
      summary.bytes_after += tensor_bytes(tensors.back());
      continue;
    }
    ++summary.quantized;
    const WeightMatrix* w = it->second;
    const std::string stem = name.substr(0, name.size() - std::string(".weight").size());
    const int64_t rows = w->rows, cols = w->cols;
    const auto produce = [quantized, name, w](auto part) {
      return [quantized, name, w, part] { return part(quantized(name, w)); };
    };
    switch (scheme.format) {
      case WeightFormat::Q8_0:
      case WeightFormat::Q4_0: {
        WeightMatrix shape_only;
        shape_only.format = scheme.format;
        shape_only.cols = cols;
        tensors.push_back(
            {name, DType::U8, {rows, int64_t(shape_only.row_bytes())}, produce([](const QuantizedMatrix& q) {
               return q.values;
             })});
        break;
      }
      case WeightFormat::Int8:
        tensors.push_back({name, DType::I8, {rows, cols}, produce([](const QuantizedMatrix& q) { return q.values; })});
        tensors.push_back({stem + ".weight_scale", DType::F32, {rows}, produce([](const QuantizedMatrix& q) {
                             return vector_bytes(q.row_scales);
                           })});
        if (w8a8 && request.activations == "static") {
          const Uint8Range range = request.calibration.at(name);
          tensors.push_back({stem + ".input_scale", DType::F32, {1}, [range] { return as_bytes(&range.scale, 4); }});
          tensors.push_back(
              {stem + ".input_zero_point", DType::I32, {1}, [range] { return as_bytes(&range.zero_point, 4); }});
        }
        break;
      case WeightFormat::Int4: {
        const int64_t groups = cols / scheme.group;
        tensors.push_back(
            {name, DType::U8, {rows, cols / 2}, produce([](const QuantizedMatrix& q) { return q.values; })});
        tensors.push_back({stem + ".weight_scale", DType::F16, {rows, groups}, produce([](const QuantizedMatrix& q) {
                             return vector_bytes(q.group_scales);
                           })});
        if (scheme.asymmetric)
          tensors.push_back(
              {stem + ".weight_zero_point", DType::U8, {rows, groups}, produce([](const QuantizedMatrix& q) {
                 return q.zero_points;
               })});
        break;
      }
      default: fail("quantize: unexpected format");
    }
    for (size_t i = tensors.size(); i-- > 0 && tensors[i].name.starts_with(stem + ".");)
      summary.bytes_after += tensor_bytes(tensors[i]);
  }
  for (const auto& entry : model.kv_b_proj_to_join()) {  // kept by rule, as f32
    const MlaWeights* attn = entry.second;
    ++summary.kept_by_rule;
    tensors.push_back({entry.first, DType::F32, kv_b_proj_shape(model.config),
                       [&model, attn] { return vector_bytes(join_kv_b_proj(model.config, *attn)); }});
    summary.bytes_after += tensor_bytes(tensors.back());
  }

  nlohmann::ordered_json config = nlohmann::ordered_json::parse(model.config_json, nullptr, false);
  if (config.is_discarded() || !config.is_object()) fail("quantize: the source config.json is not a JSON object");
  if (config.contains("quantization_config"))
    fail("quantize: {} is already quantized (quantization_config is set); start from the f32/bf16 model", model_path);
  config["quantization_config"] = {{"quant_method", "deepmoe"},
                                   {"format", request.type},
                                   {"activations", w8a8 ? request.activations : "none"},
                                   {"keep", request.keep_regex}};
  write_hf_directory(out_dir, config.dump(2) + "\n", tensors, read_model_tokenizer_text(model_path));
  return summary;
}

std::map<std::string, Uint8Range> calibrate_activation_ranges(const ModelWeights& weights,
                                                              const std::string& tokens_file, int64_t n_tokens,
                                                              int64_t seq, int threads) {
  if (seq < 1 || n_tokens < 1) fail("calibration: need at least one token and a window of at least one");
  seq = std::min(seq, weights.config.max_position_embeddings);
  const TokenWindows data(tokens_file, seq, WindowOrder::Sequential, 0);
  const int64_t windows = std::min((data.tokens() - 1) / seq, (n_tokens + seq - 1) / seq);
  if (windows < 1) fail("{}: fewer than {} tokens for one calibration window", tokens_file, seq + 1);

  struct Range {
    float min = std::numeric_limits<float>::infinity(), max = -std::numeric_limits<float>::infinity();
    void add(float v) {
      min = std::min(min, v);
      max = std::max(max, v);
    }
    void merge(const Range& r) {
      min = std::min(min, r.min);
      max = std::max(max, r.max);
    }
    bool seen() const { return min <= max; }
  };
  std::map<const void*, std::string> names;
  for (const auto& [name, w] : weights.named_matrices()) names[w->data] = name;
  std::map<std::string, Range> ranges;
  ModelOptions options;
  options.threads = threads;
  options.context.observer = [&](const WeightMatrix& w, const float* x, int64_t n_rows, int64_t x_stride) {
    const auto it = names.find(w.data);
    if (it == names.end()) return;
    Range& r = ranges[it->second];
    for (int64_t m = 0; m < n_rows; ++m)
      for (int64_t k = 0; k < w.cols; ++k) r.add(x[m * x_stride + k]);
  };
  Model model(weights, std::move(options));
  LatentCache cache(weights.config, seq);
  std::vector<int32_t> inputs, targets;
  std::vector<float> logits(size_t(seq * weights.config.vocab_size));
  for (int64_t k = 0; k < windows; ++k) {
    data.batch(k, 1, inputs, targets);
    cache.length = 0;
    model.forward(inputs, cache, LogitsFor::AllTokens, logits.data());
  }

  // Fallbacks for weights that saw nothing: "model.layers.N.mlp.experts.E.up_proj.weight" →
  // the layer's "up_proj" over all experts, then the model's.
  auto projection = [](const std::string& name) {
    const size_t end = name.rfind('.'), begin = name.rfind('.', end - 1);
    return name.substr(begin + 1, end - begin - 1);
  };
  auto layer_of = [](const std::string& name) {
    int layer = -1;
    return std::sscanf(name.c_str(), "model.layers.%d.", &layer) == 1 ? layer : -1;
  };
  std::map<std::pair<int, std::string>, Range> by_layer;
  std::map<std::string, Range> by_model;
  for (const auto& [name, r] : ranges) {
    by_layer[{layer_of(name), projection(name)}].merge(r);
    by_model[projection(name)].merge(r);
  }
  std::map<std::string, Uint8Range> out;
  for (const auto& [data, name] : names) {
    Range r = ranges.count(name) ? ranges[name] : Range{};
    if (!r.seen()) r = by_layer[{layer_of(name), projection(name)}];
    if (!r.seen()) r = by_model[projection(name)];
    if (r.seen()) out[name] = uint8_range(r.min, r.max);
  }
  return out;
}

}  // namespace deepmoe
