#!/usr/bin/env bash
# Two builds of deepmoe side by side in one run, rounds interleaved (issue 19's before/after):
# training tokens/s and peak RSS (bench/train_bench.sh's model, f32 and bf16), `deepmoe bench` on
# the race's shapes (Q8_0, Q4_0; 1 and 2 threads) with llama.cpp once per cell, and the engine
# alone (no HTTP) at concurrency 1 and 16.
#   [SHAPES="small v2lite"] [PARTS="train infer serve"] bench/before_after.sh OLD_BUILD_DIR NEW_BUILD_DIR [WORKDIR]
# Make the old build from a worktree: git worktree add /tmp/old COMMIT && cmake -S /tmp/old -B /tmp/old/build ...
set -euo pipefail
old=$(realpath "$1") new=$(realpath "$2") work=${3:-/tmp/before_after}
repo=$(cd "$(dirname "$0")/.." && pwd) here=$repo/bench/peer_llamacpp
mkdir -p "$work"
"$here/install.sh" >/dev/null
side_dir() { [ "$1" = old ] && echo "$old" || echo "$new"; }
want() { [[ " ${PARTS:-train infer serve} " == *" $1 "* ]]; }

# Training: the quickstart's model, 12 steps of batch 8 × 128, the median step after the first.
if want train; then
sed -n '/^cat >"\$work\/config.json"/,/^JSON/p' "$repo/bench/train_bench.sh" | sed "s#\$work#$work#" | bash
"$new/deepmoe" init --config "$work/config.json" --out "$work/train-model" --seed 1 >/dev/null
/usr/bin/python3 -c "import numpy as n; n.random.default_rng(0).integers(0, 4096, 200000, dtype=n.uint32).tofile('$work/tokens.u32')"
for round in 1 2; do for precision in f32 bf16; do for side in old new; do
  rm -rf "$work/run"
  /usr/bin/time -f "%M" -o "$work/rss" "$(side_dir $side)/deepmoe" train --init "$work/train-model" \
    --data "$work/tokens.u32" --seq 128 --batch 8 --steps 12 --order sequential --lr 1e-3 --threads 2 \
    --precision $precision --out "$work/run" >/dev/null
  /usr/bin/python3 - "$work/run" $side $precision "$(cat "$work/rss")" <<'PY'
import json, statistics, sys
run, side, precision, rss = sys.argv[1:5]
rates = [json.loads(l)["tokens_per_second"] for l in open(f"{run}/metrics.jsonl")][1:]
print(f"train {precision} {side}: {statistics.median(rates):.0f} tok/s, peak RSS {int(rss) / 1024:.0f} MB")
PY
done; done; done
fi

# Inference: the race's small shape, and with SHAPES="small v2lite" also the race's DeepSeek-V2-Lite
# (all 27 layers: llama.cpp takes a deepseek2 file for V2-Lite, without q_lora_rank, only at 27;
# making its files takes ~31 GB of disk for a while, its Q8_0 decode ~16 GB of memory).
cp "$repo/bench/configs/small.json" "$work/small.json"
cp "$repo/bench/configs/deepseek-v2-lite.json" "$work/v2lite.json"
if want infer || want serve; then
[ -f "$work/tokenizer/tokenizer.json" ] ||
  "$new/deepmoe" tokenizer-train --vocab-size 1000 --out "$work/tokenizer" "$repo/README.md" "$repo"/docs/*.md >/dev/null 2>&1
cells() { /usr/bin/python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(round(d['prefill_tok_s'], 1), round(d['decode_tok_s'], 1))" "$1"; }
fi
want infer && for shape in ${SHAPES:-small}; do
  if [ ! -f "$work/$shape-q4_0.gguf" ]; then
    "$new/deepmoe" init --config "$work/$shape.json" --out "$work/$shape.hf" --dtype bf16 --seed 1 --tokenizer "$work/tokenizer" >/dev/null
    for t in q8_0 q4_0; do "$new/deepmoe" convert --to gguf --model "$work/$shape.hf" --out "$work/$shape-$t.gguf" --type $t >/dev/null; done
    rm -rf "$work/$shape.hf"
  fi
  for type in q8_0 q4_0; do for threads in 1 2; do for round in 1 2; do
    for side in old new; do
      r=$(/usr/bin/time -f "%M" -o "$work/rss" "$(side_dir $side)/deepmoe" bench --model "$work/$shape-$type.gguf" \
        --threads $threads --prompt 128 --gen 64 --reps 3 --json 2>/dev/null)
      echo "$shape $type threads $threads $side: prefill decode $(cells "$r"), peak RSS $(($(cat "$work/rss") / 1024)) MB"
    done
    if [ $round = 1 ]; then
      r=$(LD_PRELOAD=$here/build/threadpool_shim.so node "$here/race.mjs" "$work/$shape-$type.gguf" --threads $threads --prompt 128 --gen 64 --reps 3 2>/dev/null)
      echo "$shape $type threads $threads llama.cpp: prefill decode $(cells "$r")"
    fi
  done; done; done
done

# Serving, the engine alone, as the server runs it (bf16 weights of an f32 checkpoint).
want serve || exit 0
[ -d "$work/serve.hf" ] || "$new/deepmoe" init --config "$work/small.json" --out "$work/serve.hf" --seed 2 --tokenizer "$work/tokenizer" >/dev/null
for round in 1 2; do for side in old new; do
  echo "engine $side: $("$(side_dir $side)/bench/engine_bench" "$work/serve.hf" --concurrency 1,16 --dtype bf16 --prompt 64 --gen 64 --reps 2 2>/dev/null | tr '\n' ' ')"
done; done
