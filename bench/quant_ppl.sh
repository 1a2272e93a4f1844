#!/usr/bin/env bash
# Perplexity and top-1 agreement of every quantization type against the f32 original, on the
# quickstart model and its validation tokens (numbers in docs/benchmarks.md, "Quantization").
# usage: bench/quant_ppl.sh BUILD_DIR MODEL_DIR VAL.u32 CALIBRATION.u32 [WORK_DIR]
set -euo pipefail
build=$1 model=$2 val=$3 calibration=$4 work=${5:-/tmp/quant_ppl}
deepmoe=$build/deepmoe
mkdir -p "$work"
base=$("$deepmoe" ppl --model "$model" --data "$val" --seq 128 --json | /usr/bin/python3 -c "import json,sys; print(json.load(sys.stdin)['perplexity'])")
echo "| type | size (MiB) | perplexity | vs f32 | top-1 agreement |"
echo "|---|---|---|---|---|"
echo "| f32 | $(du -m "$model/model.safetensors" | cut -f1) | $base | | |"
for spec in w8 q8_0 "w8a8 --calibration $calibration" "w8a8 --activations dynamic" w4g128 w4g128_asym w4g64 w4g32 q4_0; do
  set -- $spec
  type=$1
  shift
  name=$type$([ $# -gt 0 ] && echo "_${*##* }" | tr -c 'a-z0-9_\n' '_' || true)
  "$deepmoe" quantize --model "$model" --type "$type" --out "$work/$name" "$@" >/dev/null
  "$deepmoe" ppl --model "$work/$name" --data "$val" --seq 128 --compare "$model" --json |
    /usr/bin/python3 -c "
import json, sys
d = json.load(sys.stdin)
print(f\"| $type ${*} | $(du -m "$work/$name/model.safetensors" | cut -f1) | {d['perplexity']:.3f} | {100 * (d['perplexity'] / $base - 1):+.2f}% | {100 * d['top1_agreement']:.1f}% |\")"
done
