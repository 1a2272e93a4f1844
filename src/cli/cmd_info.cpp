#include "cli/common.h"
#include "model/config.h"

namespace deepmoe::cli {

void add_info_command(CLI::App& app) {
  auto model_dir = std::make_shared<std::string>();
  auto load = std::make_shared<LoadOptions>();
  auto* command = app.add_subcommand("info", "Summarize a model: architecture, parameters, KV cache");
  command->add_option("--model", *model_dir, "HuggingFace model directory")->required();
  add_load_options(command, *load);
  command->callback([model_dir, load] {
    const auto weights = load_model(*model_dir, *load);
    const Config& c = weights->config;
    int64_t moe_layers = 0;
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) moe_layers += weights->layers[size_t(l)].is_moe;
    fmt::print("model              {} ({})\n", *model_dir, c.model_type);
    fmt::print("layers             {} ({} dense, {} MoE)\n", c.num_hidden_layers, c.num_hidden_layers - moe_layers,
               moe_layers);
    fmt::print("hidden             {}, vocab {}, heads {}\n", c.hidden_size, c.vocab_size, c.num_attention_heads);
    fmt::print("attention          MLA: q_lora_rank {}, kv_lora_rank {}, qk_nope {}, qk_rope {}, v_head {}\n",
               c.q_lora_rank ? std::to_string(*c.q_lora_rank) : "none (q_proj)", c.kv_lora_rank, c.qk_nope_head_dim,
               c.qk_rope_head_dim, c.v_head_dim);
    if (c.n_routed_experts > 0)
      fmt::print("experts            {} routed (top-{}, {}, {}, groups {}/{}), {} shared, intermediate {}\n",
                 c.n_routed_experts, c.num_experts_per_tok, to_string(c.scoring_func), to_string(c.topk_method),
                 c.topk_group, c.n_group, c.n_shared_experts, c.moe_intermediate_size);
    fmt::print("rope               theta {}{}\n", c.rope_theta,
               c.rope_scaling ? fmt::format(", yarn factor {} from {} positions", c.rope_scaling->factor,
                                            c.rope_scaling->original_max_position_embeddings)
                              : "");
    fmt::print("parameters         {:.3f} M total, {:.3f} M active per token\n", weights->parameter_count() / 1e6,
               weights->active_parameter_count() / 1e6);
    if (c.num_nextn_predict_layers > 0)
      fmt::print("multi-token pred.  {} module(s), {:.3f} M parameters of their own\n", c.num_nextn_predict_layers,
                 weights->mtp_parameter_count() / 1e6);
    fmt::print("weights            {:.1f} MiB as loaded ({})\n", double(weights->weight_bytes()) / (1 << 20),
               weights->file_residence());
    fmt::print("kv cache per token {} values = {} bytes in f32 ({} layers x (kv_lora_rank {} + qk_rope {}))\n",
               c.num_hidden_layers * c.kv_cache_values_per_token(),
               c.num_hidden_layers * c.kv_cache_values_per_token() * 4, c.num_hidden_layers, c.kv_lora_rank,
               c.qk_rope_head_dim);
  });
}

}  // namespace deepmoe::cli
