#!/usr/bin/env bash
# Training speed of deepmoe against the same model trained the ordinary PyTorch way (Debian torch,
# f32, loop over experts; bench/train_peer_torch.py) in the same run, same batch, sequence and
# threads, plus model FLOP utilization against the machine's measured FMA peak.
#   bench/train_bench.sh [build-dir] [work-dir] [threads]
# The model is the quickstart's: hidden 256, 6 layers (first dense), 16 routed experts top-2 + 1
# shared, vocab 4096 (about 12 M parameters, 3.9 M active per token).
set -euo pipefail
build=${1:-build}
work=${2:-build/train_bench}
threads=${3:-2}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$work"
cat >"$work/config.json" <<'JSON'
{"model_type": "deepseek_v3", "vocab_size": 4096, "hidden_size": 256, "intermediate_size": 768,
 "moe_intermediate_size": 128, "num_hidden_layers": 6, "num_attention_heads": 4, "q_lora_rank": 128,
 "kv_lora_rank": 64, "qk_nope_head_dim": 32, "qk_rope_head_dim": 16, "v_head_dim": 32,
 "n_routed_experts": 16, "n_shared_experts": 1, "num_experts_per_tok": 2, "first_k_dense_replace": 1,
 "n_group": 4, "topk_group": 2, "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": true,
 "routed_scaling_factor": 2.5, "tie_word_embeddings": false}
JSON
seq=128 batch=8 steps=20
"$build/deepmoe" init --config "$work/config.json" --out "$work/model" --seed 1 >/dev/null
/usr/bin/python3 -c "import numpy as n; n.random.default_rng(0).integers(0, 4096, 200000, dtype=n.uint32).tofile('$work/tokens.u32')"
# f32, then bf16 GEMM operands (falls back to f32, with a note, on CPUs without AVX512-BF16).
for precision in f32 bf16; do
  "$build/deepmoe" train --init "$work/model" --data "$work/tokens.u32" --seq $seq --batch $batch --steps $steps \
    --order sequential --lr 1e-3 --threads "$threads" --precision $precision --out "$work/run-$precision" >/dev/null
  /usr/bin/python3 - "$work/run-$precision" "$threads" $precision <<'PY'
import json, statistics, sys
run, threads, precision = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rates = [json.loads(l)["tokens_per_second"] for l in open(f"{run}/metrics.jsonl")][1:]
print(json.dumps({"engine": "deepmoe", "precision": precision, "threads": threads,
                  "tokens_per_second": statistics.median(rates)}))
PY
done
/usr/bin/python3 "$here/train_peer_torch.py" --model "$work/model" --data "$work/tokens.u32" --seq $seq --batch $batch \
  --steps 10 --threads "$threads"
# Model FLOPs per trained token: 3 x (2 x active matmul parameters + causal attention), as in
# the PaLM paper's MFU; printed so the table can divide by the roofline's FMA peak.
/usr/bin/python3 - "$work/config.json" $seq <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); T = int(sys.argv[2])
h, H = c["hidden_size"], c["num_attention_heads"]
qk, v = c["qk_nope_head_dim"] + c["qk_rope_head_dim"], c["v_head_dim"]
attn = h * c["q_lora_rank"] + c["q_lora_rank"] * H * qk + h * (c["kv_lora_rank"] + c["qk_rope_head_dim"]) \
     + c["kv_lora_rank"] * H * (c["qk_nope_head_dim"] + v) + H * v * h
expert = 3 * h * c["moe_intermediate_size"]
moe = (c["num_experts_per_tok"] + c["n_shared_experts"]) * expert + h * c["n_routed_experts"]
dense = 3 * h * c["intermediate_size"]
L, k = c["num_hidden_layers"], c["first_k_dense_replace"]
active = L * attn + k * dense + (L - k) * moe + c["vocab_size"] * h
attention_flops = L * 2 * H * (qk + v) * (T + 1) / 2
print(json.dumps({"active_matmul_parameters": active, "train_flops_per_token": 3 * (2 * active + attention_flops)}))
PY
