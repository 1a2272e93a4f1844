#!/usr/bin/env bash
# Prefill and decode speed of two model shapes with random BF16 weights, at 1 and 2 threads,
# with weight bytes read per decoded token and the share of the measured memory bandwidth.
#   bench/model_bench.sh [build-dir] [work-dir]
# (a) small: hidden 512, 8 layers, 16 routed experts top-2 + 1 shared, vocab 32000
# (b) DeepSeek-V2-Lite's shape cut to 8 layers (about 9 GB of BF16; needs ~10 GB free RAM and disk)
set -euo pipefail
build=${1:-build}
work=${2:-build/model_bench}
mkdir -p "$work"
deepmoe=$build/deepmoe

cat >"$work/small.json" <<'JSON'
{"model_type": "deepseek_v3", "vocab_size": 32000, "hidden_size": 512, "intermediate_size": 1408,
 "moe_intermediate_size": 256, "num_hidden_layers": 8, "num_attention_heads": 8, "q_lora_rank": 256,
 "kv_lora_rank": 128, "qk_nope_head_dim": 64, "qk_rope_head_dim": 32, "v_head_dim": 64,
 "n_routed_experts": 16, "n_shared_experts": 1, "num_experts_per_tok": 2, "first_k_dense_replace": 1,
 "n_group": 1, "topk_group": 1, "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": true}
JSON
# DeepSeek-V2-Lite config.json with num_hidden_layers 27 -> 8.
cat >"$work/v2lite8.json" <<'JSON'
{"model_type": "deepseek_v2", "vocab_size": 102400, "hidden_size": 2048, "intermediate_size": 10944,
 "moe_intermediate_size": 1408, "num_hidden_layers": 8, "num_attention_heads": 16, "q_lora_rank": null,
 "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
 "n_routed_experts": 64, "n_shared_experts": 2, "num_experts_per_tok": 6, "first_k_dense_replace": 1,
 "moe_layer_freq": 1, "topk_method": "greedy", "n_group": 1, "topk_group": 1, "scoring_func": "softmax",
 "norm_topk_prob": false, "routed_scaling_factor": 1.0, "max_position_embeddings": 163840,
 "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096, "beta_fast": 32,
                  "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707}}
JSON

# OpenBLAS picks its kernels from the CPU unless OPENBLAS_CORETYPE overrides it (some machines
# set it to Haswell, which halves sgemm speed on AVX-512 CPUs); the JSON's "gemm" field says which.
unset OPENBLAS_CORETYPE
for shape in small v2lite8; do
  [ -f "$work/$shape/model.safetensors" ] || "$deepmoe" init --config "$work/$shape.json" --out "$work/$shape" --dtype bf16 --seed 1 >/dev/null
  # Warm the page cache with one sequential read: the kernel then holds the file in large pages,
  # which streams faster than pages faulted in one by one (measured: up to 1.4x in decode).
  cat "$work/$shape/model.safetensors" >/dev/null
  for threads in 1 2; do
    "$deepmoe" bench --model "$work/$shape" --threads $threads --prompt 128 --gen 64 --reps 5 --json |
      tee "$work/$shape-t$threads.json"
  done
done
