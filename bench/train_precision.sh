#!/usr/bin/env bash
# bf16 mixed precision against f32 over the quickstart's run: the same model, data, seed and
# settings (scripts/quickstart), trained twice; prints the speed of each and how far the bf16
# loss curve strays from f32 (training loss averaged over windows of 100 steps, and every
# validation loss). Needs the quickstart's data: run scripts/quickstart first.
#   bench/train_precision.sh [build-dir] [steps]
set -euo pipefail
build=${1:-build}
steps=${2:-4000}
[ -f out/brown.u32 ] && [ -d out/quickstart-init ] || { echo "run scripts/quickstart first (needs out/brown.u32)" >&2; exit 1; }
for precision in f32 bf16; do
  "$build/deepmoe" train --init out/quickstart-init --data out/brown.u32 --val-data out/brown.val.u32 --seq 128 --batch 8 \
    --steps "$steps" --lr 3e-3 --min-lr 3e-4 --warmup 50 --schedule cosine --optimizer adamw --weight-decay 0.01 \
    --clip 1.0 --bias-update 0.001 --precision "$precision" --eval-every 100 --threads 2 \
    --out "out/precision-$precision" | tail -3
done
/usr/bin/python3 - out/precision-f32/metrics.jsonl out/precision-bf16/metrics.jsonl <<'PY'
import json, statistics, sys
f32, bf16 = ([json.loads(l) for l in open(p)] for p in sys.argv[1:])
window = 100
gaps = []
for start in range(0, len(f32) - window + 1, window):
    a = statistics.mean(r["loss"] for r in f32[start:start + window])
    b = statistics.mean(r["loss"] for r in bf16[start:start + window])
    gaps.append(abs(b - a) / a)
val = [(a["val_loss"], b["val_loss"]) for a, b in zip(f32, bf16) if "val_loss" in a]
val_gaps = [abs(b - a) / a for a, b in val]
speed = [statistics.median(r["tokens_per_second"] for r in run[1:]) for run in (f32, bf16)]
print(json.dumps({
    "steps": len(f32), "tokens_per_second": {"f32": round(speed[0]), "bf16": round(speed[1])},
    "train_loss_window_max_rel_gap": round(max(gaps), 5), "val_loss_max_rel_gap": round(max(val_gaps), 5),
    "final_val_loss": {"f32": round(val[-1][0], 4), "bf16": round(val[-1][1], 4)},
    "within_1_percent": max(gaps) <= 0.01 and max(val_gaps) <= 0.01}))
PY
