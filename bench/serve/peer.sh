#!/usr/bin/env bash
# The serving engines side by side, in process (no HTTP): deepmoe's Engine (engine_bench) and
# llama.cpp with C sequences in one context (bench/peer_llamacpp/batch.mjs, node-llama-cpp), on the
# same GGUF file of the quickstart model, concurrency 1, 4, 16 and 64. f32: both read f32 weights;
# f16: llama.cpp reads them as F16 and deepmoe widens them at load and serves them as bf16
# (--dtype bf16), so both stream 16-bit weights.
#   bench/serve/peer.sh [MODEL_DIR] [f32|f16]      (needs bench/peer_llamacpp/install.sh once)
set -euo pipefail
cd "$(dirname "$0")/../.."
model=${1:-out/quickstart-model}
type=${2:-f32}
case $type in f32) dtype=auto ;; f16) dtype=bf16 ;; *) echo "peer.sh: type must be f32 or f16, found $type" >&2; exit 1 ;; esac
[ -f "$model/config.json" ] || { echo "peer.sh: no $model (run scripts/quickstart)" >&2; exit 1; }
mkdir -p out/bench-serve
gguf=out/bench-serve/$(basename "$model")-$type.gguf
[ -f "$gguf" ] || build/deepmoe convert --to gguf --model "$model" --out "$gguf" --type "$type" >/dev/null
unset OPENBLAS_CORETYPE
build/bench/engine_bench "$gguf" --dtype "$dtype"
(cd bench/peer_llamacpp && LD_PRELOAD=build/threadpool_shim.so node batch.mjs "../../$gguf")
