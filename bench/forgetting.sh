#!/usr/bin/env bash
# Forgetting in continued pretraining, with and without EWC: the quickstart model (pretrained on
# Brown) trained further on a new domain (the arithmetic word problems bench/arithmetic_task.py
# writes, as plain text), its Brown validation loss (the old data) measured every EVAL steps, for
# each --ewc-lambda in LAMBDAS (0: no EWC); the Fisher from `deepmoe fisher` on Brown. Prints the old
# and new validation losses at the end of each run and writes OUT/summary.json; each run's curve is
# OUT/lambda_L/loss.svg (its validation line is Brown's).
#
# usage: bench/forgetting.sh [OUT]   (default out/forgetting)
#   MODEL=DIR (default out/quickstart-model)  BROWN=out/brown.u32 (and its .val.u32)
#   LAMBDAS="0 1e4 1e5"  STEPS=200  EVAL=25  DEEPMOE=build/deepmoe
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-out/forgetting}
model=${MODEL:-out/quickstart-model}
brown=${BROWN:-out/brown.u32}
lambdas=${LAMBDAS:-0 1e4 1e5}
steps=${STEPS:-200}
every=${EVAL:-25}
deepmoe=${DEEPMOE:-build/deepmoe}
[ -f "$model/model.safetensors" ] || { echo "forgetting: no model at $model: run scripts/quickstart first (or MODEL=DIR)" >&2; exit 2; }
[ -f "${brown%.u32}.val.u32" ] || { echo "forgetting: no ${brown%.u32}.val.u32: run scripts/quickstart first (or BROWN=FILE)" >&2; exit 2; }
[ -x "$deepmoe" ] || ninja -C build deepmoe
mkdir -p "$out"
python3 bench/arithmetic_task.py "$out/task" --sft 4000 --grpo 0 --heldout 0 --max 10 --seed 7 >/dev/null
python3 -c "
import json, sys
with open(sys.argv[2], 'w') as f:
    for line in open(sys.argv[1]):
        x = json.loads(line)
        f.write(x['prompt'] + x['completion'] + '\n\n')" "$out/task/sft.jsonl" "$out/arith.txt"
"$deepmoe" prepare --tokenizer "$model" --out "$out/arith.u32" --val-fraction 0.05 "$out/arith.txt" >/dev/null
old_val="${brown%.u32}.val.u32"
ppl() { "$deepmoe" ppl --model "$1" --data "$2" --seq 128 --json | python3 -c "import json,sys; print(json.load(sys.stdin)['cross_entropy'])"; }
t0=$(date +%s)
"$deepmoe" fisher --model "$model" --data "$brown" --seq 128 --samples 64 --out "$out/fisher" >"$out/fisher.log"
echo "fisher: 64 sequences of Brown in $(($(date +%s) - t0)) s"
before_old=$(ppl "$model" "$old_val")
before_new=$(ppl "$model" "$out/arith.val.u32")
echo "before: Brown validation loss $before_old, arithmetic validation loss $before_new"
rows=()
for lambda in $lambdas; do
  ewc=()
  [ "$lambda" != 0 ] && ewc=(--ewc "$out/fisher" --ewc-lambda "$lambda")
  "$deepmoe" train --init "$model" --data "$out/arith.u32" --val-data "$old_val" --seq 128 --batch 8 \
    --steps "$steps" --lr 1e-3 --min-lr 1e-4 --warmup 20 --schedule cosine --clip 1.0 --bias-update 0.001 \
    --precision bf16 --eval-every "$every" "${ewc[@]}" --out "$out/lambda_$lambda" >"$out/lambda_$lambda.log" 2>&1
  old=$(ppl "$out/lambda_$lambda" "$old_val")
  new=$(ppl "$out/lambda_$lambda" "$out/arith.val.u32")
  echo "lambda $lambda: Brown validation loss $old, arithmetic validation loss $new"
  rows+=("{\"lambda\": $lambda, \"old_val_loss\": $old, \"new_val_loss\": $new}")
done
python3 -c "
import json, sys
json.dump({'before': {'old_val_loss': float(sys.argv[1]), 'new_val_loss': float(sys.argv[2])},
           'runs': [json.loads(r) for r in sys.argv[3:]]}, open('$out/summary.json', 'w'), indent=1)" \
  "$before_old" "$before_new" "${rows[@]}"
