#!/usr/bin/env bash
# Decode and prefill speed of one model file in each state it can reach the page cache in
# (written, cold, read: bench/file_states.sh), for deepmoe (its default loading, and --mmap) and
# llama.cpp (node-llama-cpp, its default mmap). The state is made again before every run. Prints
# a markdown table; JSON lines go to WORKDIR/page_cache.jsonl.
#
#   bench/page_cache.sh FILE.gguf [DEEPMOE_BIN] [WORKDIR]
#   (THREADS="1 2" PROMPT=128 GEN=64 REPS=3 ENGINES="deepmoe deepmoe-mmap llama.cpp" ROUNDS=1: each
#   round runs every state once more, interleaved, so a slow minute of this shared machine does not
#   land on one state alone)
#
# A V2-Lite-shaped Q4_0 file as bench/peer_llamacpp/race.sh makes it: deepmoe init --dtype bf16
# with bench/configs/deepseek-v2-lite.json, then deepmoe convert --to gguf --type q4_0.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
file=$(realpath "${1:?usage: page_cache.sh FILE.gguf [DEEPMOE_BIN] [WORKDIR]}")
deepmoe=$(realpath "${2:-build/deepmoe}")
work=${3:-/tmp/page_cache}
threads_list=${THREADS:-1 2}
prompt=${PROMPT:-128}
gen=${GEN:-64}
reps=${REPS:-3}
engines=${ENGINES:-deepmoe deepmoe-mmap llama.cpp}
rounds=${ROUNDS:-1}
mkdir -p "$work"
"$here/peer_llamacpp/install.sh" >/dev/null
unset OPENBLAS_CORETYPE  # see bench/model_bench.sh

source "$here/file_states.sh"
field() { /usr/bin/python3 -c "import json, sys; print(json.loads(sys.argv[1]).get(sys.argv[2], 'error'))" "$1" "$2" 2>/dev/null || echo error; }
round1() { /usr/bin/python3 -c "import sys; v = sys.argv[1]; print(round(float(v), 1) if v.replace('.', '', 1).isdigit() else v)" "$1"; }

results=$work/page_cache.jsonl
: >"$results"
echo "| engine | threads | state | prefill tok/s | decode tok/s | load s | weights | huge pages MB | peak RSS MB |"
echo "|---|---|---|---|---|---|---|---|---|"
for threads in $threads_list; do
  for engine in $engines; do
    for round in $(seq "$rounds"); do
    for state in written cold read; do
      file_state "$state" "$file"
      case $engine in
        llama.cpp)
          out=$(LD_PRELOAD=$here/peer_llamacpp/build/threadpool_shim.so node "$here/peer_llamacpp/race.mjs" "$file" \
            --threads "$threads" --prompt "$prompt" --gen "$gen" --reps "$reps" 2>"$work/err.txt") || out='{}'
          weights=mmap load=$(field "$out" load_seconds) ;;
        *)
          flags=()
          [ $engine = deepmoe-mmap ] && flags=(--mmap)
          out=$("$deepmoe" bench --model "$file" "${flags[@]}" --threads "$threads" --prompt "$prompt" --gen "$gen" \
            --reps "$reps" --json 2>"$work/err.txt") || out='{}'
          weights=$(field "$out" weights) load=$(field "$out" load_seconds) ;;
      esac
      [ "$out" = '{}' ] && echo "page_cache.sh: $engine failed: $(tail -1 "$work/err.txt")" >&2
      echo "{\"engine\": \"$engine\", \"threads\": $threads, \"round\": $round, \"state\": \"$state\", \"result\": $out}" >>"$results"
      echo "| $engine | $threads | $state | $(round1 "$(field "$out" prefill_tok_s)") | $(round1 "$(field "$out" decode_tok_s)")" \
        "| $(round1 "$load") | $weights | $(round1 "$(field "$out" huge_page_mb)") | $(round1 "$(field "$out" peak_rss_mb)") |"
    done
    done
  done
done
