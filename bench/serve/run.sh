#!/usr/bin/env bash
# bench/serve: deepmoe serve under load, concurrency 1, 4, 16 and 64, on the quickstart model
# (out/quickstart-model from scripts/quickstart; the same shapes with random weights when it is
# absent: speed does not depend on the weights), then the prefix-cache TTFT case.
#   bench/serve/run.sh [MODEL] [extra serve flags...]
set -euo pipefail
cd "$(dirname "$0")/../.."
model=${1:-out/quickstart-model}
shift || true
if [ ! -f "$model/config.json" ] && [ "${model##*.}" != gguf ]; then
  echo "no $model: using the quickstart shapes with random weights" >&2
  mkdir -p out/bench-serve
  [ -f out/quickstart_config.json ] || { echo "run scripts/quickstart first (it writes out/quickstart_config.json)" >&2; exit 1; }
  build/deepmoe init --config out/quickstart_config.json --out out/bench-serve/model --seed 1 --tokenizer out/quickstart-tokenizer >/dev/null
  model=out/bench-serve/model
fi
unset OPENBLAS_CORETYPE
log=$(mktemp)
build/deepmoe serve --model "$model" --port 0 --model-name bench "$@" 2>"$log" &
server=$!
trap 'kill $server 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 1 300); do url=$(grep -o 'http://127.0.0.1:[0-9]*' "$log" | head -1) && [ -n "$url" ] && break; sleep 0.1; done
echo "server: $(head -1 "$log")"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
port=${url##*:}
build/bench/serve_load 127.0.0.1 "$port" bench ${DEEPMOE_SERVE_BENCH_ARGS:-}
kill -TERM $server
wait $server
