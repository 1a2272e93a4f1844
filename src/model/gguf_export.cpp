#include "model/gguf_export.h"

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "core/error.h"
#include "io/mapped_file.h"
#include "io/safetensors.h"
#include "kernels/ggml_blocks.h"
#include "model/config.h"
#include "model/tensor_list.h"
#include "tokenizer/tokenizer_config.h"

namespace deepmoe {

namespace {

namespace fs = std::filesystem;

// llama.cpp's token types.
constexpr int kNormal = 1, kControl = 3, kUserDefined = 4, kUnused = 5;

class TensorSource {
 public:
  explicit TensorSource(const std::string& dir) : reader_(dir) {}
  bool has(const std::string& name) const { return reader_.find(name) != nullptr; }

  // The tensor widened to f32, checked against the expected HF shape.
  std::vector<float> f32(const std::string& name, const std::vector<int64_t>& shape) const {
    const TensorView* view = reader_.find(name);
    if (view == nullptr) fail("{}: missing tensor {}", reader_.dir(), name);
    if (view->shape != shape)
      fail("{}: tensor {} has shape [{}], expected [{}]", view->file, name, fmt::join(view->shape, ", "),
           fmt::join(shape, ", "));
    if (view->dtype == DType::F8_E4M3)
      fail("{}: tensor {} is FP8: convert the checkpoint to BF16 first", view->file, name);
    std::vector<float> out(size_t(view->numel()));
    std::vector<uint8_t> bounce(view->data, view->data + view->n_bytes);  // aligned reads
    convert_to_f32(view->dtype, bounce.data(), out.data(), out.size());
    return out;
  }

 private:
  CheckpointReader reader_;
};

std::vector<uint8_t> encode(const std::vector<float>& values, GgmlType type) {
  const size_t n = values.size();
  std::vector<uint8_t> out(n / size_t(ggml_block_values(type)) * size_t(ggml_block_bytes(type)));
  switch (type) {
    case GgmlType::F32: std::memcpy(out.data(), values.data(), n * 4); break;
    case GgmlType::F16:
    case GgmlType::BF16:
      for (size_t i = 0; i < n; ++i) {
        const uint16_t bits = type == GgmlType::F16 ? f32_to_f16(values[i]) : f32_to_bf16(values[i]);
        std::memcpy(out.data() + 2 * i, &bits, 2);
      }
      break;
    case GgmlType::Q8_0: quantize_q8_0(values.data(), int64_t(n), out.data()); break;
    case GgmlType::Q4_0: quantize_q4_0(values.data(), int64_t(n), out.data()); break;
  }
  return out;
}

struct Exporter {
  const Config& c;
  std::shared_ptr<TensorSource> source;
  GgmlType weight_type;
  GgufWriter& writer;

  GgmlType matrix_type(int64_t row) const {
    if (row % ggml_block_values(weight_type) == 0) return weight_type;
    return GgmlType::F16;
  }

  // A tensor whose GGUF bytes are the HF tensor's bytes: HF [out, in] is ggml {in, out}.
  void plain(const std::string& gguf, const std::string& hf, std::vector<int64_t> hf_shape, bool keep_f32 = false) {
    std::vector<int64_t> dims(hf_shape.rbegin(), hf_shape.rend());
    const GgmlType type = keep_f32 || hf_shape.size() == 1 ? GgmlType::F32 : matrix_type(dims[0]);
    auto src = source;
    writer.add_tensor(gguf, type, dims, [src, hf, hf_shape, type] { return encode(src->f32(hf, hf_shape), type); });
  }

  // The routed experts of a layer, HF [out, in] each, stacked into one {in, out, experts} tensor.
  void experts(const std::string& gguf, std::vector<std::string> hf, std::vector<int64_t> hf_shape) {
    const int64_t out = hf_shape[0], in = hf_shape[1], n = int64_t(hf.size());
    const GgmlType type = matrix_type(in);
    auto src = source;
    writer.add_tensor(gguf, type, {in, out, n}, [src, hf, hf_shape, type] {
      std::vector<float> all;
      all.reserve(hf.size() * size_t(hf_shape[0] * hf_shape[1]));
      for (const std::string& name : hf) {
        const auto one = src->f32(name, hf_shape);
        all.insert(all.end(), one.begin(), one.end());
      }
      return encode(all, type);
    });
  }

  // kv_b_proj [heads·(nope + v), kv_rank] split per head into k_b {nope, kv_rank, heads}
  // (transposed: k_b[h][r][d] = W[h·(nope+v) + d][r]) and v_b {kv_rank, v, heads}.
  void split_kv_b(const KvBHalves& halves, const std::string& hf) {
    const int64_t heads = c.num_attention_heads, nope = c.qk_nope_head_dim, v = c.v_head_dim, rank = c.kv_lora_rank;
    const std::vector<int64_t> shape{heads * (nope + v), rank};
    auto src = source;
    const GgmlType k_type = matrix_type(nope), v_type = matrix_type(rank);
    writer.add_tensor(halves.gguf_keys, k_type, {nope, rank, heads}, [=] {
      const auto w = src->f32(hf, shape);
      std::vector<float> k(size_t(heads * rank * nope));
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t r = 0; r < rank; ++r)
          for (int64_t d = 0; d < nope; ++d)
            k[size_t((h * rank + r) * nope + d)] = w[size_t((h * (nope + v) + d) * rank + r)];
      return encode(k, k_type);
    });
    writer.add_tensor(halves.gguf_values, v_type, {rank, v, heads}, [=] {
      const auto w = src->f32(hf, shape);
      std::vector<float> out(size_t(heads * v * rank));
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t j = 0; j < v; ++j)
          std::copy_n(w.begin() + (h * (nope + v) + nope + j) * rank, rank, out.begin() + (h * v + j) * rank);
      return encode(out, v_type);
    });
  }
};

void add_metadata(const Config& c, const std::string& name, GgmlType weight_type, GgufWriter& w) {
  const auto u32 = [](int64_t v) { return GgufValue::u32(uint32_t(v)); };
  const std::string a = "deepseek2.";
  w.add("general.architecture", GgufValue::string("deepseek2"));
  w.add("general.name", GgufValue::string(name));
  const uint32_t file_type = weight_type == GgmlType::F32    ? 0
                             : weight_type == GgmlType::F16  ? 1
                             : weight_type == GgmlType::Q4_0 ? 2
                             : weight_type == GgmlType::Q8_0 ? 7
                                                             : 32;
  w.add("general.file_type", GgufValue::u32(file_type));
  if (weight_type == GgmlType::Q8_0 || weight_type == GgmlType::Q4_0) w.add("general.quantization_version", u32(2));
  w.add(a + "context_length", u32(c.max_position_embeddings));
  w.add(a + "embedding_length", u32(c.hidden_size));
  // MTP modules as llama.cpp's V3.2 and GLM converters write them: counted as blocks.
  w.add(a + "block_count", u32(c.layer_count()));
  if (c.num_nextn_predict_layers > 0) w.add(a + "nextn_predict_layers", u32(c.num_nextn_predict_layers));
  w.add(a + "feed_forward_length", u32(c.intermediate_size));
  w.add(a + "attention.head_count", u32(c.num_attention_heads));
  w.add(a + "attention.head_count_kv", u32(1));  // MLA: one latent "head" shared by all
  w.add(a + "attention.key_length", u32(c.kv_lora_rank + c.qk_rope_head_dim));
  w.add(a + "attention.value_length", u32(c.kv_lora_rank));
  w.add(a + "attention.key_length_mla", u32(c.qk_nope_head_dim + c.qk_rope_head_dim));
  w.add(a + "attention.value_length_mla", u32(c.v_head_dim));
  w.add(a + "attention.layer_norm_rms_epsilon", GgufValue::f32(float(c.rms_norm_eps)));
  if (c.q_lora_rank) w.add(a + "attention.q_lora_rank", u32(*c.q_lora_rank));
  w.add(a + "attention.kv_lora_rank", u32(c.kv_lora_rank));
  w.add(a + "rope.dimension_count", u32(c.qk_rope_head_dim));
  w.add(a + "rope.freq_base", GgufValue::f32(float(c.rope_theta)));
  if (c.rope_scaling) {
    w.add(a + "rope.scaling.type", GgufValue::string("yarn"));
    w.add(a + "rope.scaling.factor", GgufValue::f32(float(c.rope_scaling->factor)));
    w.add(a + "rope.scaling.original_context_length", u32(c.rope_scaling->original_max_position_embeddings));
    w.add(a + "rope.scaling.yarn_log_multiplier", GgufValue::f32(float(0.1 * c.rope_scaling->mscale_all_dim)));
  }
  w.add(a + "leading_dense_block_count", u32(c.first_k_dense_replace));
  w.add(a + "vocab_size", u32(c.vocab_size));
  if (c.n_routed_experts > 0) {
    w.add(a + "expert_feed_forward_length", u32(c.moe_intermediate_size));
    w.add(a + "expert_count", u32(c.n_routed_experts));
    w.add(a + "expert_used_count", u32(c.num_experts_per_tok));
    w.add(a + "expert_shared_count", u32(c.n_shared_experts));
    w.add(a + "expert_weights_scale", GgufValue::f32(float(c.routed_scaling_factor)));
    w.add(a + "expert_weights_norm", GgufValue::boolean(c.norm_topk_prob));
    w.add(a + "expert_gating_func", u32(c.scoring_func == ScoringFunc::Sigmoid ? 2 : 1));
    if (c.n_group > 1 && c.topk_group < c.n_group) {
      w.add(a + "expert_group_count", u32(c.n_group));
      w.add(a + "expert_group_used_count", u32(c.topk_group));
    }
  }
}

// llama.cpp names the pre-tokenizer (its regexes are built in): recognized by the patterns.
std::string pre_tokenizer_name(const nlohmann::json& tokenizer, const std::string& file) {
  const std::string text = tokenizer.contains("pre_tokenizer") ? tokenizer["pre_tokenizer"].dump() : "";
  if (text.find(R"(\\p{N}{1,3})") != std::string::npos && text.find("\u4e00") != std::string::npos)
    return "deepseek-v3";  // 一, as UTF-8
  if (text.find(R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3})") != std::string::npos)
    return "llama-bpe";
  if (text.find("\"ByteLevel\"") != std::string::npos && text.find("\"use_regex\":true") != std::string::npos)
    return "gpt-2";
  fail("{}: pre-tokenizer is none that llama.cpp knows by name (DeepSeek-V3, Llama 3, GPT-2)", file);
}

void add_tokenizer(const Config& c, const std::string& dir, GgufWriter& w) {
  const std::string file = (fs::path(dir) / "tokenizer.json").string();
  nlohmann::json t;
  try {
    t = nlohmann::json::parse(read_text_file(file));
  } catch (const nlohmann::json::exception& e) {
    fail("{}: {}", file, e.what());
  }
  if (!t.contains("model") || t["model"].value("type", "") != "BPE" || !t["model"]["vocab"].is_object())
    fail("{}: only byte-level BPE tokenizers convert to GGUF", file);
  int64_t n = c.vocab_size;
  std::vector<std::string> tokens;
  std::vector<int64_t> types;
  const auto place = [&](int64_t id, const std::string& text, int type) {
    if (id < 0 || id >= (int64_t(1) << 24)) fail("{}: token id {} out of range", file, id);
    if (id >= n) n = id + 1;
    if (int64_t(tokens.size()) < n) {
      tokens.resize(size_t(n));
      types.resize(size_t(n), 0);
    }
    tokens[size_t(id)] = text;
    types[size_t(id)] = type;
  };
  for (const auto& [text, id] : t["model"]["vocab"].items()) place(id.get<int64_t>(), text, kNormal);
  for (const auto& added : t.value("added_tokens", nlohmann::json::array()))
    place(added.at("id").get<int64_t>(), added.at("content").get<std::string>(),
          added.value("special", false) ? kControl : kUserDefined);
  if (n > c.vocab_size) fail("{}: {} token ids, but the model's vocabulary has {} rows", file, n, c.vocab_size);
  tokens.resize(size_t(n));
  types.resize(size_t(n), 0);
  for (int64_t i = 0; i < n; ++i)
    if (types[size_t(i)] == 0) {  // ids the vocabulary skips: padding, as llama.cpp's converter writes
      tokens[size_t(i)] = fmt::format("[PAD{}]", i);
      types[size_t(i)] = kUnused;
    }
  std::vector<std::string> merges;
  for (const auto& m : t["model"].value("merges", nlohmann::json::array()))
    merges.push_back(m.is_string() ? m.get<std::string>()
                                   : m.at(0).get<std::string>() + " " + m.at(1).get<std::string>());
  w.add("tokenizer.ggml.model", GgufValue::string("gpt2"));
  w.add("tokenizer.ggml.pre", GgufValue::string(pre_tokenizer_name(t, file)));
  const TokenizerConfig config = TokenizerConfig::load(dir);
  const auto id_of = [&](const std::string& text) -> std::optional<int64_t> {
    for (size_t i = 0; i < tokens.size(); ++i)
      if (!text.empty() && tokens[i] == text) return int64_t(i);
    return std::nullopt;
  };
  const auto bos = id_of(config.bos_token), eos = id_of(config.eos_token);  // before the tokens move
  w.add("tokenizer.ggml.tokens", GgufValue::string_array(std::move(tokens)));
  w.add("tokenizer.ggml.token_type", GgufValue::i32_array(std::move(types)));
  w.add("tokenizer.ggml.merges", GgufValue::string_array(std::move(merges)));
  if (bos) w.add("tokenizer.ggml.bos_token_id", GgufValue::u32(uint32_t(*bos)));
  if (eos) w.add("tokenizer.ggml.eos_token_id", GgufValue::u32(uint32_t(*eos)));
  if (config.add_bos_token) w.add("tokenizer.ggml.add_bos_token", GgufValue::boolean(*config.add_bos_token));
  if (config.add_eos_token) w.add("tokenizer.ggml.add_eos_token", GgufValue::boolean(*config.add_eos_token));
  if (!config.chat_template.empty()) w.add("tokenizer.chat_template", GgufValue::string(config.chat_template));
}

// llama.cpp's order: in each layer the attention block (its norm first), then the feed-forward
// block (its norm first); otherwise the list's.
std::vector<TensorInfo> gguf_order(std::vector<TensorInfo> tensors) {
  for (auto begin = tensors.begin(); begin != tensors.end();) {
    const int64_t layer = begin->layer;
    const auto end = std::find_if(begin, tensors.end(), [&](const TensorInfo& t) { return t.layer != layer; });
    std::stable_partition(begin, end, [](const TensorInfo& t) { return t.block != Block::FeedForward; });
    begin = end;
  }
  return tensors;
}

}  // namespace

void export_gguf(const std::string& model_dir, const std::string& out_path, GgmlType weight_type) {
  Config c = load_config((fs::path(model_dir) / "config.json").string());
  const auto source = std::make_shared<TensorSource>(model_dir);
  c.num_nextn_predict_layers = mtp_modules_held(c, [&](const std::string& name) { return source->has(name); });
  if (c.moe_layer_freq != 1) fail("{}: moe_layer_freq {} has no deepseek2 GGUF form", model_dir, c.moe_layer_freq);
  GgufWriter writer;
  add_metadata(c, fs::path(model_dir).filename().string(), weight_type, writer);
  if (fs::exists(fs::path(model_dir) / "tokenizer.json")) add_tokenizer(c, model_dir, writer);

  Exporter ex{c, source, weight_type, writer};
  const std::vector<TensorInfo> tensors = gguf_order(tensor_list(c));
  std::map<std::string, std::vector<std::string>> stacked;  // GGUF name → its experts' HF names, in order
  for (const TensorInfo& t : tensors)
    if (t.gguf_form == GgufForm::StackedExperts) stacked[t.gguf_name].push_back(t.hf_name);
  for (const TensorInfo& t : tensors) {
    switch (t.gguf_form) {
      case GgufForm::Plain: ex.plain(t.gguf_name, t.hf_name, t.shape, t.role == TensorRole::Router); break;
      case GgufForm::SplitKvB: ex.split_kv_b(kv_b_proj_halves(t.layer), t.hf_name); break;
      case GgufForm::StackedExperts:
        if (t.expert == 0) ex.experts(t.gguf_name, stacked.at(t.gguf_name), t.shape);
        break;
    }
  }
  if (c.tie_word_embeddings) {  // llama.cpp's deepseek2 requires output.weight: the embedding
    const TensorInfo head = lm_head_info(c);
    ex.plain(head.gguf_name, tensors.front().hf_name, head.shape);  // the list starts with the embedding
  }
  writer.write(out_path);
}

}  // namespace deepmoe
