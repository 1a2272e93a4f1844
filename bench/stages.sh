#!/usr/bin/env bash
# The three stages on our own model: the quickstart model (pretrained on Brown), then SFT on arithmetic
# word problems with GSM8K-format answers that bench/arithmetic_task.py writes, then GRPO with the
# exact-match reward on other problems of the same kind; held-out accuracy after each stage through
# `deepmoe eval --task gsm8k` (0-shot; the pretrained model also 5-shot, as it has never seen the
# format), for SEEDS seeds (each seed: its own SFT data order, its own GRPO sampling). Prints a table
# (also split by question frame: "lost ... of them" against the rest) and writes OUT/summary.json; each
# GRPO run's reward curve is OUT/grpo_sN/reward.svg.
#
# By default the demonstrations carry a systematic error (MISREAD=0.7: 70 % of the SFT answers to
# "lost ... of them" questions add instead of subtracting), which SFT learns and the exact-match reward
# corrects. With MISREAD=0 (right demonstrations) SFT alone reaches ~99 % in 600 steps and leaves GRPO
# nothing to do (docs/benchmarks.md "Later training stages" has both).
#
# usage: bench/stages.sh [OUT]   (default out/stages)
#   MODEL=DIR        the pretrained model (default out/quickstart-model: run scripts/quickstart first)
#   SEEDS="1 2 3"  MISREAD=0.7  SFT_STEPS=600  GRPO_STEPS=100  GROUP=8  GRPO_LR=1e-4  DEEPMOE=build/deepmoe
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-out/stages}
model=${MODEL:-out/quickstart-model}
seeds=${SEEDS:-1 2 3}
sft_steps=${SFT_STEPS:-600}
misread=${MISREAD:-0.7}
grpo_steps=${GRPO_STEPS:-100}
group=${GROUP:-8}
grpo_lr=${GRPO_LR:-1e-4}
deepmoe=${DEEPMOE:-build/deepmoe}
[ -f "$model/model.safetensors" ] || { echo "stages: no model at $model: run scripts/quickstart first (or MODEL=DIR)" >&2; exit 2; }
[ -x "$deepmoe" ] || ninja -C build deepmoe
mkdir -p "$out"
python3 bench/arithmetic_task.py "$out/task" --sft 4000 --grpo 1000 --heldout 200 --max 10 --seed 1 \
  --misread "$misread"
# Five worked examples for the pretrained model's 5-shot run, in the held-out file's format.
python3 - "$out/task" <<'PY'
import json, sys
with open(f"{sys.argv[1]}/fewshot.jsonl", "w") as f:
    for line in list(open(f"{sys.argv[1]}/sft.jsonl"))[:5]:
        x = json.loads(line)
        f.write(json.dumps({"question": x["prompt"][len("Question: "):-len("\nAnswer:")],
                            "answer": x["completion"].strip()}) + "\n")
PY

accuracy() {  # MODEL NAME [eval flags]: strict exact match on the held-out problems
  local m=$1 name=$2
  shift 2
  "$deepmoe" eval --model "$m" --task gsm8k --data "$out/task/heldout.jsonl" --out "$out/$name.eval.json" \
    --log-samples "$out/$name.eval.jsonl" "$@" >"$out/$name.eval.log" 2>&1
  python3 -c "import json,sys; print(round(json.load(open(sys.argv[1]))['results']['gsm8k']['exact_match,strict-match'], 4))" \
    "$out/$name.eval.json"
}

echo "pretrained model: $model"
pre0=$(accuracy "$model" pretrained --num-fewshot 0)
pre5=$(accuracy "$model" pretrained5 --num-fewshot 5 --fewshot-data "$out/task/fewshot.jsonl")
echo "  held-out accuracy 0-shot $pre0, 5-shot $pre5"
results=()
for seed in $seeds; do
  t0=$SECONDS
  "$deepmoe" sft --init "$model" --data "$out/task/sft.jsonl" --seq 64 --batch 16 --steps "$sft_steps" --lr 1e-3 \
    --min-lr 1e-4 --warmup 20 --schedule cosine --clip 1.0 --bias-update 0.001 --precision bf16 --seed "$seed" \
    --out "$out/sft_s$seed" >"$out/sft_s$seed.log" 2>&1
  sft_seconds=$((SECONDS - t0))
  sft=$(accuracy "$out/sft_s$seed" "sft_s$seed" --num-fewshot 0)
  t0=$SECONDS
  "$deepmoe" grpo --init "$out/sft_s$seed" --prompts "$out/task/grpo.jsonl" --reward exact --group "$group" \
    --max-tokens 24 --temperature 1 --batch 8 --steps "$grpo_steps" --lr "$grpo_lr" --schedule constant --warmup 5 \
    --clip 1.0 --seq 72 --seed "$seed" --log-rollouts "$out/grpo_s$seed.rollouts.jsonl" \
    --out "$out/grpo_s$seed" >"$out/grpo_s$seed.log" 2>&1
  grpo_seconds=$((SECONDS - t0))
  grpo=$(accuracy "$out/grpo_s$seed" "grpo_s$seed" --num-fewshot 0)
  echo "  seed $seed: SFT $sft (${sft_steps} steps, $sft_seconds s), GRPO $grpo (${grpo_steps} steps, $grpo_seconds s)"
  results+=("{\"seed\": $seed, \"sft\": $sft, \"grpo\": $grpo, \"sft_seconds\": $sft_seconds, \"grpo_seconds\": $grpo_seconds}")
done
python3 - "$out" "$pre0" "$pre5" "$misread" "${results[@]}" <<'PY'
import json, statistics, sys
out, pre0, pre5, misread = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
runs = [json.loads(r) for r in sys.argv[5:]]


def by_frame(name):
    """Strict accuracy on the "lost ... of them" questions and on the rest."""
    right = {True: [], False: []}
    for line in open(f"{out}/{name}.eval.jsonl"):
        x = json.loads(line)
        right["lost" in x["prompt"]].append(x["exact_match"]["strict-match"])
    return {"lost": statistics.mean(right[True]), "other": statistics.mean(right[False])}


for r in runs:
    r["sft_by_frame"], r["grpo_by_frame"] = by_frame(f"sft_s{r['seed']}"), by_frame(f"grpo_s{r['seed']}")
sft, grpo = [r["sft"] for r in runs], [r["grpo"] for r in runs]
gain = [r["grpo"] - r["sft"] for r in runs]
spread = lambda xs: max(xs) - min(xs)
summary = {"misread": misread, "pretrained_0shot": pre0, "pretrained_5shot": pre5, "runs": runs,
           "sft_mean": statistics.mean(sft), "sft_spread": spread(sft),
           "grpo_mean": statistics.mean(grpo), "grpo_spread": spread(grpo),
           "gain_mean": statistics.mean(gain), "gain_min": min(gain)}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
print(f"held-out strict exact match over {len(runs)} seeds (200 problems each; SFT answers misread {misread}):")
print(f"  pretrained      0-shot {pre0:.3f}   5-shot {pre5:.3f}")
print(f"  after SFT       mean {summary['sft_mean']:.3f}  spread {summary['sft_spread']:.3f}  {sft}")
print(f"  after GRPO      mean {summary['grpo_mean']:.3f}  spread {summary['grpo_spread']:.3f}  {grpo}")
for r in runs:
    print(f"  seed {r['seed']}: 'lost' questions {r['sft_by_frame']['lost']:.3f} -> {r['grpo_by_frame']['lost']:.3f}, "
          f"the rest {r['sft_by_frame']['other']:.3f} -> {r['grpo_by_frame']['other']:.3f}")
print(f"  GRPO - SFT      mean {summary['gain_mean']:+.3f}  smallest {summary['gain_min']:+.3f}"
      f"  (larger than the spread of either: {summary['gain_min'] > max(summary['sft_spread'], summary['grpo_spread'])})")
PY
