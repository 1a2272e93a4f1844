#!/usr/bin/env bash
# The serving engines side by side, in process (no HTTP): deepmoe's Engine (engine_bench) and
# llama.cpp with C sequences in one context (bench/peer_llamacpp/batch.mjs, node-llama-cpp), on the
# same GGUF file of the quickstart model (f32), concurrency 1, 4, 16 and 64.
#   bench/serve/peer.sh [MODEL_DIR]      (needs bench/peer_llamacpp/install.sh once)
set -euo pipefail
cd "$(dirname "$0")/../.."
model=${1:-out/quickstart-model}
[ -f "$model/config.json" ] || { echo "peer.sh: no $model (run scripts/quickstart)" >&2; exit 1; }
mkdir -p out/bench-serve
gguf=out/bench-serve/$(basename "$model")-f32.gguf
[ -f "$gguf" ] || build/deepmoe convert --to gguf --model "$model" --out "$gguf" --type f32 >/dev/null
unset OPENBLAS_CORETYPE
build/bench/engine_bench "$gguf"
(cd bench/peer_llamacpp && LD_PRELOAD=build/threadpool_shim.so node batch.mjs "../../$gguf")
