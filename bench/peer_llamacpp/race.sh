#!/usr/bin/env bash
# deepmoe against llama.cpp on the same GGUF files (random weights, made by deepmoe convert):
# prefill and decode tokens/s and peak RSS, at 1 and 2 threads, prompts of 128 and 512 tokens,
# 128 generated tokens, median of 5 repetitions; prints a markdown table (raw JSON lines go to
# WORKDIR/results.jsonl).
#
#   bench/peer_llamacpp/race.sh [DEEPMOE_BIN] [WORKDIR] [--quick]
#
# Shapes:
#   small   hidden 512, 8 layers, q_lora, 16 routed experts top-2 + 1 shared, vocab 32000
#           (bench/model_bench.sh's small shape)
#   v2lite  DeepSeek-V2-Lite's full config (27 layers, hidden 2048, 64 experts top-6 + 2 shared,
#           no q_lora): GGUF Q8_0 16.7 GB, Q4_0 8.9 GB; making them needs a 31 GB bf16
#           checkpoint on disk for a while (deleted after conversion) and takes many minutes.
# Files are made once and reused; SHAPES="small" runs one shape. Each run starts from the file in one page-cache state
# (bench/file_states.sh; STATES, default "written read"): as the converter left it, and after one
# sequential read from cold. --quick: the small shape only, 1 thread, 1 repetition (checks
# that the script works).
#
# Both engines read the same file. llama.cpp runs through node-llama-cpp (race.mjs) with the
# thread-pool shim preloaded (a persistent ggml pool, as llama-bench uses); its RSS includes
# node's own ~90 MB. deepmoe runs `deepmoe bench`, its peak RSS from /usr/bin/time -v.
# deepmoe runs under `ulimit -v` = the machine's RAM (RACE_ULIMIT_KB overrides), so a run that
# would not fit fails alone (an "error" cell) instead of pushing the machine into the OOM killer.
# node cannot take that cap (V8 reserves far more address space than it uses); llama.cpp maps
# the file and fits (README.md, "Memory with V2-Lite").
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
quick=0
positional=()
for arg in "$@"; do
  case $arg in
    --quick) quick=1 ;;
    -*) echo "race.sh: unknown flag '$arg' (usage: race.sh [DEEPMOE_BIN] [WORKDIR] [--quick])" >&2; exit 1 ;;
    *) positional+=("$arg") ;;
  esac
done
deepmoe=${positional[0]:-build/deepmoe}
work=${positional[1]:-/tmp/race}
deepmoe=$(realpath "$deepmoe")
[ -x "$deepmoe" ] || { echo "race.sh: $deepmoe is not an executable deepmoe" >&2; exit 1; }
"$here/install.sh" >/dev/null
mkdir -p "$work"
work=$(realpath "$work")
# OpenBLAS would otherwise take Haswell kernels on AVX-512 machines that export this (see
# bench/model_bench.sh); deepmoe's prefill uses it.
unset OPENBLAS_CORETYPE

if [ $quick -eq 1 ]; then shapes=small threads_list=1 reps=1; else shapes=${SHAPES:-small v2lite} threads_list="1 2" reps=5; fi
prompts="128 512"
states=${STATES:-written read}
source "$repo/bench/file_states.sh"
gen=128
# llama.cpp maps the file (its default, llama-bench's too). On x86 it also copies Q4_0 weights
# into a repacked (8x8 interleaved) buffer, so with mmap a Q4_0 file is resident twice (mapped
# pages + the copy; V2-Lite Q4_0: 16.8 GB for an 8.85 GB file). LLAMA_NO_MMAP=1 reads the file
# instead (V2-Lite Q4_0: 8.6 GB). Q8_0 is not repacked on x86: mapped once either way.
llama_mmap=
[ "${LLAMA_NO_MMAP:-0}" = 1 ] && llama_mmap=--no-mmap

# The shapes' configs, shared with bench/model_bench.sh. DeepSeek-V2-Lite's 27 layers make
# llama.cpp read it without q_lora.
cp "$repo/bench/configs/small.json" "$work/small.json"
cp "$repo/bench/configs/deepseek-v2-lite.json" "$work/v2lite.json"

# llama.cpp refuses a GGUF without a tokenizer, and the race never reads text: a small BPE
# trained on this repository's docs, padded by convert to the config's vocabulary.
[ -f "$work/tokenizer/tokenizer.json" ] ||
  "$deepmoe" tokenizer-train --vocab-size 1000 --out "$work/tokenizer" "$repo/README.md" "$repo"/docs/*.md >/dev/null 2>&1

make_files() {  # make_files SHAPE: WORKDIR/SHAPE-q8_0.gguf and -q4_0.gguf
  local shape=$1
  [ -f "$work/$shape-q8_0.gguf" ] && [ -f "$work/$shape-q4_0.gguf" ] && return
  if [ "$shape" = v2lite ]; then
    local free_gb
    free_gb=$(df -BG --output=avail "$work" | tail -1 | tr -dc 0-9)
    [ "$free_gb" -ge 60 ] || { echo "race.sh: V2-Lite needs ~60 GB free in $work (31 GB bf16 + 26 GB GGUF), $free_gb GB free" >&2; exit 1; }
  fi
  echo "making $shape GGUF files in $work ..." >&2
  rm -rf "$work/$shape.hf"
  "$deepmoe" init --config "$work/$shape.json" --out "$work/$shape.hf" --dtype bf16 --seed 1 --tokenizer "$work/tokenizer" >/dev/null
  for type in q8_0 q4_0; do
    "$deepmoe" convert --to gguf --model "$work/$shape.hf" --out "$work/$shape-$type.gguf" --type $type >/dev/null
  done
  rm -rf "$work/$shape.hf"
}

ram_kb=${RACE_ULIMIT_KB:-$(awk '/MemTotal/ {print $2}' /proc/meminfo)}  # override if a fitting run trips it
results=$work/results.jsonl
: >"$results"
# field JSON KEY: one number from a JSON object, or "error".
field() { /usr/bin/python3 -c "import json, sys; print(round(json.loads(sys.argv[1])[sys.argv[2]], 1))" "$1" "$2" 2>/dev/null || echo error; }

# The machines share DRAM with other guests: two threads' read bandwidth moves between ~50 and
# ~84 GB/s from one second to the next. build/read_bandwidth measures it just before each
# engine's run; "deepmoe decode GB/s" is the weight bytes it streams per second of decode, and
# its share of the bandwidth measured before it is the roofline figure.
bandwidth() { "$here/build/read_bandwidth" "$1" 2>/dev/null || echo error; }

echo "| model | file | state | threads | prompt | prefill tok/s deepmoe | llama.cpp | decode tok/s deepmoe | llama.cpp | deepmoe decode GB/s | read GB/s before deepmoe / llama.cpp | peak RSS MB deepmoe | llama.cpp |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for shape in $shapes; do
  make_files "$shape"
  for type in q8_0 q4_0; do
    file=$work/$shape-$type.gguf
    for state in $states; do
      for threads in $threads_list; do
        for prompt in $prompts; do
          bw_ours=$(bandwidth "$threads")
          file_state "$state" "$file"
          ours=$( (ulimit -v "$ram_kb"; /usr/bin/time -v -o "$work/time.txt" "$deepmoe" bench --model "$file" \
            --threads "$threads" --prompt "$prompt" --gen $gen --reps $reps --json) 2>"$work/deepmoe.err") ||
            { echo "race.sh: deepmoe bench failed on $file: $(tail -1 "$work/deepmoe.err")" >&2; ours='{}'; }
          rss=$(awk '/Maximum resident set size/ {printf "%.1f", $6 / 1024}' "$work/time.txt" 2>/dev/null)
          [ "$ours" = '{}' ] && rss=error
          bw_theirs=$(bandwidth "$threads")
          file_state "$state" "$file"
          theirs=$(DEEPMOE_SHIM_VERBOSE=1 LD_PRELOAD=$here/build/threadpool_shim.so node "$here/race.mjs" "$file" \
            --threads "$threads" --prompt "$prompt" --gen $gen --reps $reps $llama_mmap 2>"$work/llama.err") ||
            { echo "race.sh: llama.cpp failed on $file: $(tail -1 "$work/llama.err")" >&2; theirs='{}'; }
          grep -q "threadpool_shim: a pool of" "$work/llama.err" ||
            echo "race.sh: the thread-pool shim did not attach on $file (llama.cpp timed with per-graph threads)" >&2
          echo "{\"shape\": \"$shape\", \"type\": \"$type\", \"state\": \"$state\", \"deepmoe\": $ours, \"deepmoe_time_v_rss_mb\": \"${rss:-error}\", \"llama_cpp\": $theirs, \"read_gb_s_before_deepmoe\": \"$bw_ours\", \"read_gb_s_before_llama_cpp\": \"$bw_theirs\"}" >>"$results"
          echo "| $shape | $type | $state | $threads | $prompt | $(field "$ours" prefill_tok_s) | $(field "$theirs" prefill_tok_s)" \
            "| $(field "$ours" decode_tok_s) | $(field "$theirs" decode_tok_s) | $(field "$ours" decode_weight_gb_s)" \
            "| $bw_ours / $bw_theirs | ${rss:-error} | $(field "$theirs" peak_rss_mb) |"
        done
      done
    done
  done
done
