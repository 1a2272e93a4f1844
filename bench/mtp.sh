#!/usr/bin/env bash
# Multi-token prediction, measured (issue 23; docs/benchmarks.md "Multi-token prediction"):
#  1. the quickstart model trained with --mtp-depth 1 (the quickstart recipe, from out/quickstart-init),
#     unless MODEL names one: the drafts' acceptance on Brown validation prompts, by draft position,
#     and single-sequence decode tokens/s without and with --speculative mtp:K, 1 and 2 threads;
#  2. DeepSeek-V2-Lite's shape cut to 8 layers plus one MTP layer, random weights, bf16 and GGUF Q4_0:
#     a verify pass of 2..5 positions against one decode step (time and weight bytes), the MTP draft
#     step, and the speedup they give at DeepSeek's reported acceptance (bench --verify);
#  3. the server at concurrency 1 and 16, without and with --speculative mtp:1 (bench/serve/run.sh).
#   bench/mtp.sh [MODEL]        (after scripts/quickstart; part 2 needs ~12 GB of disk and RAM)
# PARTS="1 2 3" selects parts.
set -euo pipefail
cd "$(dirname "$0")/.."
parts=${PARTS:-1 2 3}
work=out/bench-mtp
mkdir -p "$work"
deepmoe=build/deepmoe
unset OPENBLAS_CORETYPE
model=${1:-$work/quickstart-mtp}

if [[ " $parts " == *" 1 "* || " $parts " == *" 3 "* ]] && [ ! -f "$model/config.json" ]; then
  [ -f out/quickstart-init/config.json ] || { echo "bench/mtp.sh: run scripts/quickstart first" >&2; exit 1; }
  # The quickstart's training run, with the MTP module and its loss (lambda 0.3, V3's first phase).
  $deepmoe train --init out/quickstart-init --data out/brown.u32 --val-data out/brown.val.u32 --seq 128 --batch 8 \
    --steps 4000 --lr 3e-3 --min-lr 3e-4 --warmup 50 --schedule cosine --optimizer adamw --weight-decay 0.01 \
    --clip 1.0 --bias-update 0.001 --precision bf16 --eval-every 100 --save-every 500 --mtp-depth 1 --out "$model"
fi

if [[ " $parts " == *" 1 "* ]]; then
  echo "== 1. $model: acceptance on Brown validation prompts (greedy, 40 prompts of 32 tokens, 64 generated)"
  /usr/bin/python3 - "$deepmoe" "$model" out/brown.val.u32 <<'PY'
import re, subprocess, sys
import numpy as np
deepmoe, model, val = sys.argv[1:]
tokens = np.fromfile(val, dtype=np.uint32)
for k in (1, 2, 3):
    steps = accepted = drafted = 0
    by_position = np.zeros(k)
    for p in range(40):
        start = p * (len(tokens) - 64) // 40
        prompt = ",".join(str(t) for t in tokens[start:start + 32])
        err = subprocess.run([deepmoe, "generate", "--model", model, "--tokens", prompt, "-n", "64", "--temperature", "0",
                              "--threads", "1", "--speculative", f"mtp:{k}"], capture_output=True, text=True, check=True).stderr
        m = re.search(r"speculative: (\d+) steps, (\d+) of (\d+) drafts accepted.*by position:(.*)", err)
        n = int(m.group(1))
        steps += n
        accepted += int(m.group(2))
        drafted += int(m.group(3))
        by_position += n * np.array([float(x) for x in m.group(4).split()])
    rates = " ".join(f"{r:.3f}" for r in by_position / steps)
    print(f"mtp:{k}: {accepted}/{drafted} drafts accepted ({100 * accepted / drafted:.1f} %), "
          f"{(accepted + steps) / steps:.2f} tokens per verify step; drafts 1..{k} all accepted: {rates}")
PY
  echo "== 1. mtp:1 drafting among the first N ids only (--draft-vocab N), same prompts"
  /usr/bin/python3 - "$deepmoe" "$model" out/brown.val.u32 <<'PY'
import json, re, subprocess, sys
import numpy as np
deepmoe, model, val = sys.argv[1:]
tokens = np.fromfile(val, dtype=np.uint32)
vocab = json.load(open(f"{model}/config.json"))["vocab_size"]
for n in (vocab, vocab // 2, vocab // 4):
    accepted = drafted = 0
    for p in range(40):
        start = p * (len(tokens) - 64) // 40
        prompt = ",".join(str(t) for t in tokens[start:start + 32])
        err = subprocess.run([deepmoe, "generate", "--model", model, "--tokens", prompt, "-n", "64", "--temperature", "0",
                              "--threads", "1", "--speculative", "mtp:1", "--draft-vocab", str(n)],
                             capture_output=True, text=True, check=True).stderr
        m = re.search(r"(\d+) of (\d+) drafts accepted", err)
        accepted += int(m.group(1))
        drafted += int(m.group(2))
    print(f"draft vocabulary {n}: {accepted}/{drafted} accepted ({100 * accepted / drafted:.1f} %)")
PY
  echo "== 1. single-sequence decode tokens/s (Brown validation prompt, 256 generated, median of 3)"
  prompt=$(/usr/bin/python3 -c "import numpy as n; print(','.join(map(str, n.fromfile('out/brown.val.u32', dtype=n.uint32)[1000:1032])))")
  for threads in 1 2; do
    plain=""
    for spec in off mtp:1 mtp:2 mtp:3; do
      rates=()
      for _ in 1 2 3; do
        text=$($deepmoe generate --model "$model" --tokens "$prompt" -n 256 --temperature 0 --threads $threads \
          --speculative $spec 2>"$work/err.txt")
        rates+=("$(grep -o 'decode: [0-9]* tokens, [0-9.]* tok/s' "$work/err.txt" | awk '{print $4}')")
        [ -z "$plain" ] && plain=$text
        [ "$text" = "$plain" ] || echo "MISMATCH: $spec gave other tokens than plain decoding" >&2
      done
      median=$(printf '%s\n' "${rates[@]}" | sort -g | sed -n 2p)
      echo "threads $threads  $spec  decode $median tok/s  $(grep -o '[0-9]* of [0-9]* drafts accepted ([0-9.]*%)' "$work/err.txt" || true)"
    done
  done
fi

if [[ " $parts " == *" 2 "* ]]; then
  echo "== 2. V2-Lite-8 + 1 MTP layer (random weights): verify passes and the MTP draft step"
  sed -e 's/"num_hidden_layers": 27/"num_hidden_layers": 8, "num_nextn_predict_layers": 1/' \
    bench/configs/deepseek-v2-lite.json >"$work/v2lite8-mtp.json"
  [ -f "$work/v2lite8-mtp/model.safetensors" ] ||
    $deepmoe init --config "$work/v2lite8-mtp.json" --out "$work/v2lite8-mtp" --dtype bf16 --seed 1 >/dev/null
  [ -f "$work/v2lite8-mtp-q4_0.gguf" ] ||
    $deepmoe convert --to gguf --model "$work/v2lite8-mtp" --out "$work/v2lite8-mtp-q4_0.gguf" --type q4_0 >/dev/null
  for form in "$work/v2lite8-mtp" "$work/v2lite8-mtp-q4_0.gguf"; do
    for threads in 1 2; do for draft_vocab in 0 32768; do
      $deepmoe bench --model "$form" --threads $threads --prompt 128 --gen 16 --reps 7 --verify 5 --draft-vocab "$draft_vocab" --json |
        tee "$work/$(basename "$form")-t$threads-v$draft_vocab.json" | /usr/bin/python3 -c "
import json, sys
d = json.load(sys.stdin); v = d['verify']
print(f\"{d['model']} threads {d['threads']}, draft vocabulary {v['draft_vocabulary']}: decode {d['decode_tok_s']:.1f} tok/s\")
for p in v['passes']:
    print(f\"  {p['positions']} positions: {1e3 * p['seconds']:.1f} ms = {p['time_vs_one']:.2f}x one step, \"
          f\"{p['weight_bytes'] / 1e9:.3f} GB = {p['bytes_vs_one']:.2f}x\")
print(f\"  MTP draft step: {1e3 * v['mtp_draft_seconds']:.1f} ms, {v['mtp_draft_weight_bytes'] / 1e9:.3f} GB\")
for m in v['modeled_speedup']:
    if m['acceptance'] in (0.85, 0.9) and m['drafts'] <= 3:
        print(f\"  acceptance {m['acceptance']}, {m['drafts']} drafts: {m['tokens_per_step']:.2f} tokens/step, speedup {m['speedup']:.2f}x\")
"
    done; done
  done
fi

if [[ " $parts " == *" 3 "* ]]; then
  echo "== 3. the server, concurrency 1 and 16, without and with --speculative mtp:1"
  cp -n out/quickstart-tokenizer/* "$model/" 2>/dev/null || true
  for flags in "" "--speculative mtp:1" "--speculative mtp:1 --speculative-max-batch 16"; do
    echo "-- serve $flags"
    DEEPMOE_SERVE_BENCH_ARGS="--concurrency 1,16" bench/serve/run.sh "$model" $flags || true
  done
fi
