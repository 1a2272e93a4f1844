#!/usr/bin/env bash
# Prefill and decode speed of two model shapes with random BF16 weights, at 1 and 2 threads,
# with weight bytes read per decoded token and the share of the measured memory bandwidth.
#   bench/model_bench.sh [build-dir] [work-dir]
# (a) small: hidden 512, 8 layers, 16 routed experts top-2 + 1 shared, vocab 32000
# (b) DeepSeek-V2-Lite's shape cut to 8 layers (about 9 GB of BF16; needs ~10 GB free RAM and disk)
# Each shape runs from the file as `init` left it (written) and after one sequential read from cold
# (read): bench/file_states.sh; STATES overrides.
set -euo pipefail
source "$(dirname "$0")/file_states.sh"
states=${STATES:-written read}
build=${1:-build}
work=${2:-build/model_bench}
mkdir -p "$work"
deepmoe=$build/deepmoe

configs=$(cd "$(dirname "$0")" && pwd)/configs
cp "$configs/small.json" "$work/small.json"
# DeepSeek-V2-Lite's config with num_hidden_layers 27 -> 8.
sed 's/"num_hidden_layers": 27/"num_hidden_layers": 8/' "$configs/deepseek-v2-lite.json" >"$work/v2lite8.json"

# OpenBLAS picks its kernels from the CPU unless OPENBLAS_CORETYPE overrides it (some machines
# set it to Haswell, which halves sgemm speed on AVX-512 CPUs); the JSON's "gemm" field says which.
unset OPENBLAS_CORETYPE
for shape in small v2lite8; do
  [ -f "$work/$shape/model.safetensors" ] || "$deepmoe" init --config "$work/$shape.json" --out "$work/$shape" --dtype bf16 --seed 1 >/dev/null
  for state in $states; do
    for threads in 1 2; do
      file_state "$state" "$work/$shape/model.safetensors"
      "$deepmoe" bench --model "$work/$shape" --threads $threads --prompt 128 --gen 64 --reps 5 --json |
        tee "$work/$shape-$state-t$threads.json"
    done
  done
done
