// The model's parameters, by their HuggingFace names. F32, BF16 and quantized matrices (GGUF
// Q8_0/Q4_0 blocks, our Int8/Int4 formats: docs/quantization.md) point straight into the mmap'd
// files; F16 and FP8 (with 128x128 weight_scale_inv blocks) are widened to f32 once at load.
// Norm vectors and the gate are always f32.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "io/safetensors.h"
#include "kernels/matmul.h"
#include "model/config.h"

namespace deepmoe {

struct MlaWeights {                       // model.layers.N.self_attn.*
  WeightMatrix q_proj;                    // [heads * qk_head_dim, hidden], when q_lora_rank is null
  WeightMatrix q_a_proj;                  // [q_lora_rank, hidden]
  const float* q_a_layernorm = nullptr;   // [q_lora_rank]
  WeightMatrix q_b_proj;                  // [heads * qk_head_dim, q_lora_rank]
  WeightMatrix kv_a_proj_with_mqa;        // [kv_lora_rank + qk_rope_head_dim, hidden]
  const float* kv_a_layernorm = nullptr;  // [kv_lora_rank]
  // [heads * (qk_nope_head_dim + v_head_dim), kv_lora_rank]; empty from a GGUF with attn_k_b /
  // attn_v_b, which holds only the halves below (join_kv_b_proj rebuilds it for converters).
  WeightMatrix kv_b_proj;
  WeightMatrix o_proj;  // [hidden, heads * v_head_dim]
  // The two halves of kv_b_proj, which both attention forms read. Keys: per head, the key
  // up-projection transposed, [heads][kv_lora_rank, qk_nope_head_dim], so queries map into the
  // latent space with matmul; derived from kv_b_proj, or a GGUF's attn_k_b as it is (Q8_0
  // included).
  // Values: head h's rows [kv_lora_rank] start at row h·values_head_stride + values_head_offset;
  // kv_b_proj itself (stride nope + v, offset nope), or a GGUF's attn_v_b (stride v, offset 0).
  // From a GGUF both stay in the file's type, so the absorbed products round their inputs to
  // Q8_0 and read the quantized bytes exactly as llama.cpp's absorbed deepseek2 graph does.
  WeightMatrix kv_b_proj_keys_transposed;
  WeightMatrix kv_b_proj_values;
  int64_t values_head_stride = 0, values_head_offset = 0;
};

// kv_b_proj [heads·(nope + v), kv_lora_rank] as f32, from the two halves.
std::vector<float> join_kv_b_proj(const Config& c, const MlaWeights& w);
std::vector<int64_t> kv_b_proj_shape(const Config& c);

struct MlpWeights {        // SiLU-gated: down(silu(gate(x)) * up(x))
  WeightMatrix gate_proj;  // [intermediate, hidden]
  WeightMatrix up_proj;    // [intermediate, hidden]
  WeightMatrix down_proj;  // [hidden, intermediate]
};

struct MoeWeights {   // model.layers.N.mlp.*
  WeightMatrix gate;  // gate.weight [n_routed_experts, hidden], widened to F32 (HF routes in f32)
  const float* e_score_correction_bias = nullptr;  // [n_routed_experts], noaux_tc only
  std::vector<MlpWeights> experts;
  bool has_shared_experts = false;
  MlpWeights shared_experts;  // intermediate = moe_intermediate_size * n_shared_experts
};

struct LayerWeights {
  const float* input_layernorm = nullptr;
  const float* post_attention_layernorm = nullptr;
  MlaWeights self_attn;
  bool is_moe = false;
  MlpWeights mlp;  // dense layers
  MoeWeights moe;  // MoE layers
};

// A multi-token-prediction module (DeepSeek-V3 §2.2), model.layers.{num_hidden_layers + d}.*:
// h' = eh_proj([enorm(embed(t_{i+1})) ; hnorm(h_i)]), then its decoder block
// (layers[num_hidden_layers + d]), then shared_head_norm and the main model's head. The embedding
// and head are the main model's (a checkpoint's copies, embed_tokens and shared_head.head, are
// skipped on load and not written).
struct MtpWeights {
  const float* enorm = nullptr;             // [hidden], on the next token's embedding
  const float* hnorm = nullptr;             // [hidden], on the previous depth's (post-norm) hidden state
  WeightMatrix eh_proj;                     // [hidden, 2·hidden]: the embedding's columns first
  const float* shared_head_norm = nullptr;  // [hidden]
};

struct ModelWeights {
  Config config;
  std::string config_json;           // the text config was parsed from (rebuilt for a .gguf)
  WeightMatrix embed_tokens;         // [vocab, hidden]
  std::vector<LayerWeights> layers;  // config.layer_count(): the main layers, then the MTP blocks
  const float* norm = nullptr;
  WeightMatrix lm_head;                      // [vocab, hidden]; embed_tokens when tied
  std::vector<MtpWeights> mtp;               // config.num_nextn_predict_layers
  std::vector<std::string> ignored_tensors;  // unknown names (warned about); uncounted MTP layers excluded

  // Loads config.json and the safetensors of `model_dir` (or a .gguf), mapped or read into memory
  // as `load` says; throws Error naming the file and tensor.
  static std::unique_ptr<ModelWeights> load(const std::string& model_dir, LoadOptions load = {});

  // F32 weights viewing a flat buffer: tensor i of tensor_list(config) at offsets[i] elements
  // from base, or not held when offsets[i] < 0 (its slot stays empty: another rank's expert under
  // expert parallelism); exactly train::Parameters' values (or, called again on its grads, its
  // gradients). Nothing is copied and nothing derived: kv_b_proj_values views
  // kv_b_proj (stride nope + v, offset nope), lm_head is embed_tokens when tied, and
  // kv_b_proj_keys_transposed stays empty (data nullptr), since training weights change every
  // step; read kv_b_proj itself. It has no checkpoint: reader() throws, weight_bytes() is 0.
  // With bf16_base (a bf16 copy of the same buffer, for mixed-precision training), every matrix
  // but the routers' views that copy instead, as BF16; norms, biases and routers stay f32.
  // transposed_keys: derive kv_b_proj_keys_transposed after all (owned, a copy of this moment's
  // weights), for a Model that decodes in absorbed form over the view (GRPO's sampler).
  static std::unique_ptr<ModelWeights> view_f32(const Config& config, const float* base,
                                                std::span<const int64_t> offsets, const uint16_t* bf16_base = nullptr,
                                                bool transposed_keys = false);

  // Rounds every F32 matrix but the routers' to BF16 (nearest even, as PyTorch's .to(bfloat16)),
  // held in memory: the 16-bit weights servers run f32 checkpoints in (activations stay f32).
  // Matrices that shared data (tied embeddings, kv_b_proj's halves) still share it. Returns how
  // many tensors it rounded (shared data counted once).
  int64_t round_to_bf16();

  // Every matrix by its HF tensor name (lm_head only when untied; derived matrices excluded).
  std::vector<std::pair<std::string, const WeightMatrix*>> named_matrices() const;
  // Layers whose kv_b_proj exists only as its two halves (a GGUF), by the HF name converters
  // write it under (join_kv_b_proj).
  std::vector<std::pair<std::string, const MlaWeights*>> kv_b_proj_to_join() const;
  const CheckpointReader& reader() const;

  int64_t parameter_count() const;         // every parameter of the main model (no MTP modules)
  int64_t active_parameter_count() const;  // per token: top-k routed experts only
  int64_t mtp_parameter_count() const;     // the MTP modules' own (the shared embedding and head excluded)
  size_t weight_bytes() const;             // as held (mapped or widened)
  // How the checkpoint's files are held, for a person: "mmap", "read into memory" (+ ", locked").
  std::string file_residence() const;
  // Weight bytes one decoded token reads: every matrix it multiplies by, with num_experts_per_tok
  // experts per MoE layer (the memory traffic that bounds decode speed). mtp: one MTP module's
  // draft step instead (its block, eh_proj and the shared head).
  size_t decode_weight_bytes(bool mtp = false) const;
  // Bytes of one routed expert (gate, up and down), as held; 0 without MoE layers.
  size_t routed_expert_bytes() const;

 private:
  // Binds what derives from the list's tensors: lm_head (embed_tokens when tied), and where
  // kv_b_proj is whole its value half (kv_b_proj itself) and, if asked, its transposed key half
  // (owned); where a GGUF gave the two halves instead, their value stride.
  void derive_matrices(bool with_transposed_keys);
  WeightMatrix transpose_key_up_projection(const WeightMatrix& kv_b_proj);
  std::vector<WeightMatrix*> derived_matrices();  // the members derive_matrices sets

  std::unique_ptr<CheckpointReader> reader_;
  std::vector<std::vector<float>> owned_f32_;  // widened or derived tensors
  std::vector<std::vector<uint16_t>> owned_bf16_;
  std::vector<std::vector<int32_t>> owned_i32_;
  friend class WeightLoader;
};

}  // namespace deepmoe
