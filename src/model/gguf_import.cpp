#include "model/gguf_import.h"

#include <fmt/format.h>

#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "core/dtype.h"
#include "core/error.h"
#include "io/gguf.h"
#include "kernels/ggml_blocks.h"
#include "model/tensor_list.h"

namespace deepmoe {

namespace {

DType tensor_dtype(GgmlType type) {
  switch (type) {
    case GgmlType::F32: return DType::F32;
    case GgmlType::F16: return DType::F16;
    case GgmlType::BF16: return DType::BF16;
    case GgmlType::Q8_0: return DType::Q8_0;
    case GgmlType::Q4_0: return DType::Q4_0;
  }
  fail("GGUF: ggml type {} has no DType", uint32_t(type));
}

class Importer {
 public:
  explicit Importer(const std::string& path) : path_(path) {}

  // values elements of `t` starting at element `first`, as an HF tensor of `shape`.
  // `derived`: part of an HF tensor rather than one (TensorView::derived).
  void add(const std::string& name, const GgufTensor& t, std::vector<int64_t> shape, int64_t first = 0,
           bool derived = false) {
    int64_t n = 1;
    for (const int64_t d : shape) n *= d;
    const int64_t block = ggml_block_values(t.type);
    const uint8_t* data = t.data + first / block * ggml_block_bytes(t.type);
    TensorView v;
    v.name = name;
    v.shape = std::move(shape);
    v.file = path_;
    v.dtype = tensor_dtype(t.type);  // in place: GGUF data start 32-byte aligned
    v.data = data;
    v.n_bytes = dtype_bytes(v.dtype, n);
    v.derived = derived;
    views_[name] = std::move(v);
  }

  std::map<std::string, TensorView> views_;

 private:
  const std::string& path_;
};

std::vector<int64_t> reversed(const std::vector<int64_t>& dims) { return {dims.rbegin(), dims.rend()}; }

nlohmann::json config_json(const GgufFile& f) {
  const std::string a = "deepseek2.";
  const std::string arch = f.get_string("general.architecture");
  if (arch != "deepseek2") fail("{}: architecture {} is not deepseek2", f.file, arch);
  const auto u32_or = [&](const std::string& key, int64_t fallback) -> int64_t {
    return f.find(key) ? int64_t(f.get_u32(key)) : fallback;
  };
  const auto f32_or = [&](const std::string& key, double fallback) -> double {
    return f.find(key) ? double(f.get_f32(key)) : fallback;
  };
  bool has_bias = false;
  for (const auto& t : f.tensors) has_bias = has_bias || t.name.ends_with("exp_probs_b.bias");
  const bool mla_layout = f.find(a + "attention.key_length_mla") != nullptr;
  const int64_t rope = f.get_u32(a + "rope.dimension_count");
  const int64_t key_length =
      mla_layout ? f.get_u32(a + "attention.key_length_mla") : f.get_u32(a + "attention.key_length");
  const int64_t value_length =
      mla_layout ? f.get_u32(a + "attention.value_length_mla") : f.get_u32(a + "attention.value_length");
  const bool sigmoid = u32_or(a + "expert_gating_func", 1) == 2;
  const int64_t groups = u32_or(a + "expert_group_count", 1);
  const int64_t nextn = u32_or(a + "nextn_predict_layers", 0);
  if (nextn >= int64_t(f.get_u32(a + "block_count")))
    fail("{}: {}nextn_predict_layers {} leaves no main layers of block_count {}", f.file, a, nextn,
         f.get_u32(a + "block_count"));
  const GgufTensor* embed = f.find_tensor("token_embd.weight");
  if (embed == nullptr || embed->dims.size() != 2) fail("{}: missing tensor token_embd.weight", f.file);
  nlohmann::json c = {
      {"model_type", sigmoid || has_bias ? "deepseek_v3" : "deepseek_v2"},
      {"vocab_size", u32_or(a + "vocab_size", embed->dims[1])},
      {"hidden_size", f.get_u32(a + "embedding_length")},
      {"intermediate_size", f.get_u32(a + "feed_forward_length")},
      {"moe_intermediate_size", u32_or(a + "expert_feed_forward_length", 0)},
      // llama.cpp counts the MTP ("NextN") layers as blocks (its V3.2 and GLM converters).
      {"num_hidden_layers", int64_t(f.get_u32(a + "block_count")) - nextn},
      {"num_nextn_predict_layers", nextn},
      {"num_attention_heads", f.get_u32(a + "attention.head_count")},
      {"kv_lora_rank", f.get_u32(a + "attention.kv_lora_rank")},
      {"qk_rope_head_dim", rope},
      {"qk_nope_head_dim", key_length - rope},
      {"v_head_dim", value_length},
      {"n_routed_experts", u32_or(a + "expert_count", 0)},
      {"n_shared_experts", u32_or(a + "expert_shared_count", 0)},
      {"num_experts_per_tok", u32_or(a + "expert_used_count", 0)},
      {"first_k_dense_replace", u32_or(a + "leading_dense_block_count", 0)},
      {"routed_scaling_factor", f32_or(a + "expert_weights_scale", 1.0)},
      {"scoring_func", sigmoid ? "sigmoid" : "softmax"},
      {"topk_method", has_bias     ? "noaux_tc"
                      : groups > 1 ? "group_limited_greedy"
                                   : "greedy"},
      {"n_group", groups},
      {"topk_group", u32_or(a + "expert_group_used_count", 1)},
      {"norm_topk_prob", f.find(a + "expert_weights_norm") && f.find(a + "expert_weights_norm")->bool_value},
      {"rms_norm_eps", f.get_f32(a + "attention.layer_norm_rms_epsilon")},
      {"rope_theta", f32_or(a + "rope.freq_base", 10000.0)},
      {"max_position_embeddings", f.get_u32(a + "context_length")},
      {"tie_word_embeddings", f.find_tensor("output.weight") == nullptr},
  };
  const int64_t q_lora = u32_or(a + "attention.q_lora_rank", 0);
  c["q_lora_rank"] = q_lora > 0 ? nlohmann::json(q_lora) : nlohmann::json(nullptr);
  if (f.find(a + "rope.scaling.type") && f.get_string(a + "rope.scaling.type") == "yarn") {
    // llama.cpp keeps only mscale_all_dim (as 0.1 × it) and takes mscale equal to it, as
    // DeepSeek's V2-Lite and V3 configs have them.
    const double mscale_all_dim = f32_or(a + "rope.scaling.yarn_log_multiplier", 0.0) / 0.1;
    c["rope_scaling"] = {{"type", "yarn"},
                         {"factor", f.get_f32(a + "rope.scaling.factor")},
                         {"original_max_position_embeddings", f.get_u32(a + "rope.scaling.original_context_length")},
                         {"beta_fast", 32},
                         {"beta_slow", 1},
                         {"mscale", mscale_all_dim},
                         {"mscale_all_dim", mscale_all_dim}};
  }
  return c;
}

}  // namespace

bool is_gguf_path(const std::string& path) { return path.ends_with(".gguf") && std::filesystem::is_regular_file(path); }

GgufCheckpoint import_gguf(const std::string& path, LoadOptions load) {
  auto file = std::make_unique<MappedFile>(path, load);
  const GgufFile f = parse_gguf(file->bytes(), path);
  GgufCheckpoint out;
  const nlohmann::json json = config_json(f);
  out.config = parse_config(json, path);
  out.config_json = json.dump(2);
  Importer im(path);
  const Config& c = out.config;
  // GGUF name → the list's tensors under it (the experts of a stacked tensor, or one), and
  // attn_k_b → both halves of its layer's kv_b_proj.
  // What the file can present under HF names: a stacked experts tensor one per expert, every other
  // tensor once (the parser has checked that tensors do not overlap, so this grows with the file).
  int64_t presentable = 0;
  for (const GgufTensor& t : f.tensors)
    presentable += t.name.ends_with("_exps.weight") && t.dims.size() == 3 ? t.dims[2] : 1;
  const auto held = [&](const TensorInfo& t) {
    const GgufTensor* found = f.find_tensor(t.gguf_name);
    switch (t.gguf_form) {
      case GgufForm::Plain: return found != nullptr;
      case GgufForm::StackedExperts: return found && found->dims.size() == 3 && found->dims[2] > t.expert;
      case GgufForm::SplitKvB: return found || f.find_tensor(kv_b_proj_halves(t.layer).gguf_keys);
    }
    return false;
  };
  if (const auto missing = first_missing_tensor(c, presentable, held))
    fail("{}: missing tensor {} (for {})", path, missing->gguf_name, missing->hf_name);
  const std::vector<TensorInfo> list = tensor_list(c);
  std::map<std::string, std::vector<const TensorInfo*>> by_gguf_name;
  std::map<std::string, KvBHalves> split_kv_b;
  std::set<std::string> value_halves;
  for (const TensorInfo& t : list) {
    by_gguf_name[t.gguf_name].push_back(&t);
    if (t.gguf_form != GgufForm::SplitKvB) continue;
    const KvBHalves halves = kv_b_proj_halves(t.layer);
    split_kv_b[halves.gguf_keys] = halves;
    value_halves.insert(halves.gguf_values);
  }
  for (const GgufTensor& t : f.tensors) {
    const std::vector<int64_t> shape = reversed(t.dims);
    if (const auto it = by_gguf_name.find(t.name); it != by_gguf_name.end()) {
      const std::vector<const TensorInfo*>& infos = it->second;
      if (infos.front()->gguf_form != GgufForm::StackedExperts) {
        im.add(infos.front()->hf_name, t, shape);
        continue;
      }
      if (t.dims.size() != 3 || t.dims[2] != c.n_routed_experts)
        fail("{}: {} is not {} stacked experts", path, t.name, c.n_routed_experts);
      const int64_t per_expert = t.dims[0] * t.dims[1];
      for (const TensorInfo* expert : infos)
        im.add(expert->hf_name, t, {t.dims[1], t.dims[0]}, expert->expert * per_expert);
    } else if (const auto kv_b = split_kv_b.find(t.name); kv_b != split_kv_b.end()) {
      const KvBHalves& halves = kv_b->second;
      const GgufTensor* v_b = f.find_tensor(halves.gguf_values);
      if (v_b == nullptr) fail("{}: {} without {}", path, t.name, halves.gguf_values);
      if (t.dims.size() != 3 || v_b->dims.size() != 3 || t.dims[1] != v_b->dims[0] || t.dims[2] != v_b->dims[2])
        fail("{}: {} and its attn_v_b have mismatched shapes", path, t.name);
      // As they are, the two halves of kv_b_proj: k_b {nope, rank, heads} is the transposed key
      // half [heads·rank, nope], v_b {rank, v, heads} the value half [heads·v, rank].
      im.add(halves.hf_keys, t, {t.dims[2] * t.dims[1], t.dims[0]}, 0, true);
      im.add(halves.hf_values, *v_b, {v_b->dims[2] * v_b->dims[1], v_b->dims[0]}, 0, true);
    } else if (!value_halves.count(t.name)) {
      im.add(t.name, t, shape);  // unknown: reported by the loader as ignored
    }
  }
  out.reader = std::make_unique<CheckpointReader>(path, std::move(file), std::move(im.views_));
  return out;
}

}  // namespace deepmoe
