#!/usr/bin/env bash
# deepmoe eval end to end on a tiny model, every task kind in process and against `deepmoe serve`
# over HTTP (--endpoint): the same log-likelihoods (within 1e-4) and the same generations; the
# results file's layout and speed figures; HumanEval programs judged in the sandbox; bad input
# refused with one line. Task files are written here (no benchmark text). Prints "N passed, M failed".
set -u
deepmoe=$1
work=$2
rm -rf "$work" && mkdir -p "$work" && cd "$work" || exit 1
passed=0
failed=0
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done' EXIT
ok() { passed=$((passed + 1)); echo "PASS $1"; }
bad() { failed=$((failed + 1)); echo "FAIL $1"; }
expect_error() {
  local name=$1 pattern=$2
  shift 2
  "$@" >out.txt 2>err.txt
  local rc=$? lines
  lines=$(wc -l <err.txt)
  if [ "$rc" -ne 0 ] && [ "$rc" -lt 128 ] && [ "$lines" -eq 1 ] && grep -q -- "$pattern" err.txt; then
    ok "$name"
  else
    bad "$name (exit $rc, $lines stderr lines: $(head -c 300 err.txt))"
  fi
}

for i in $(seq 1 40); do echo "the quick brown fox jumps over the lazy dog $i times, then naps. Question: 3 + 4 = 7."; done >text.txt
"$deepmoe" tokenizer-train --vocab-size 300 --out tok text.txt >/dev/null 2>&1 || bad "tokenizer-train"
cat >config.json <<'JSON'
{"model_type": "deepseek_v3", "vocab_size": 320, "hidden_size": 64, "intermediate_size": 96,
 "moe_intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "q_lora_rank": 32,
 "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16,
 "n_routed_experts": 16, "n_shared_experts": 1, "num_experts_per_tok": 2, "first_k_dense_replace": 1,
 "n_group": 4, "topk_group": 2, "max_position_embeddings": 1024}
JSON
"$deepmoe" init --config config.json --out tmodel --seed 5 --tokenizer tok >/dev/null || bad "init"

# Task files of our own, one per format.
printf '%s\n' '{"context": "the quick brown", "choices": [" fox", " dog naps"], "gold": 0}' \
  '{"context": "", "choices": ["the fox", "naps then"], "gold": 1}' \
  '{"context": "the lazy dog", "choices": [" naps.", " jumps over the fox", " times"], "gold": 0}' >mc.jsonl
printf '%s\n' 'Napping: the lazy dog' 2 'jumps over the fox.' 'times then.' 'naps in the sun.' 'brown.' \
  'Running: the quick brown fox' 0 'jumps over the lazy dog.' 'naps.' 'then the dog' 'over 3 times.' >hellaswag.txt
mkdir -p mmlu
printf '%s\n' '"What naps?",the lazy dog,a river,"seven ""old"" stones",bread,A' 'Foxes do what?,jump,melt,"rust, then fall",sleep,A' \
  >mmlu/toy_facts_test.csv
printf '%s\n' '{"question": "The fox jumps 3 times, then 4 times. How many jumps?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"}' \
  '{"question": "A dog naps 2 times a day for 3 days. How many naps?", "answer": "2 * 3 = 6\n#### 6"}' >train.jsonl
printf '%s\n' '{"question": "The quick fox jumps 5 times and the dog 1,000 times. How many in all?", "answer": "5 + 1000 = 1005\n#### 1,005"}' \
  '{"question": "How many dogs nap if 2 of 3 do?", "answer": "#### 2"}' >gsm8k.jsonl
# HumanEval-shaped tasks: the first passes whatever one token the model adds to its comment line,
# the second fails whatever it adds (its test asserts False).
/usr/bin/python3 - <<'PY'
import json
tasks = [
    {"task_id": "Toy/0", "prompt": "def add_one(x):\n    return x + 1\n# ", "canonical_solution": "",
     "test": "def check(candidate):\n    assert candidate(2) == 3\n", "entry_point": "add_one"},
    {"task_id": "Toy/1", "prompt": "def broken(x):\n    return x\n# ", "canonical_solution": "",
     "test": "def check(candidate):\n    assert False, 'the test fails'\n", "entry_point": "broken"},
]
with open("humaneval.jsonl", "w") as f:
    for t in tasks:
        f.write(json.dumps(t) + "\n")
PY

# The server, as lm-eval's local-completions would meet it.
"$deepmoe" serve --model tmodel --port 0 --api-key secret-key 2>serve.log &
pids+=($!)
url=""
for _ in $(seq 1 300); do
  url=$(grep -o 'http://127.0.0.1:[0-9]*' serve.log | head -1)
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || bad "server did not start: $(cat serve.log)"

# same_scores NAME A.jsonl B.jsonl: log-likelihoods within 1e-4, the same predictions.
same_scores() {
  /usr/bin/python3 - "$2" "$3" <<'PY' && ok "$1" || bad "$1"
import json, sys
a, b = ([json.loads(l) for l in open(p)] for p in sys.argv[1:])
worst = max(abs(p - q) / max(abs(q), 1e-9) for x, y in zip(a, b) for p, q in zip(x["logprobs"], y["logprobs"]))
print(f"  {len(a)} questions, worst relative difference {worst:.2e}")
sys.exit(0 if len(a) == len(b) > 0 and worst <= 1e-4 and all(x["pred"] == y["pred"] for x, y in zip(a, b)) else 1)
PY
}

for task in mc hellaswag mmlu; do
  data=$task.jsonl
  [ "$task" = hellaswag ] && data=hellaswag.txt
  [ "$task" = mmlu ] && data=mmlu
  "$deepmoe" eval --model tmodel --task "$task" --data "$data" --out "${task}_local.json" \
    --log-samples "${task}_local.jsonl" >"${task}_local.txt" 2>&1 || bad "eval $task ($(tail -c 300 "${task}_local.txt"))"
  "$deepmoe" eval --model tmodel --task "$task" --data "$data" --endpoint "$url" --api-key secret-key \
    --out "${task}_http.json" --log-samples "${task}_http.jsonl" >"${task}_http.txt" 2>&1 ||
    bad "eval $task --endpoint ($(tail -c 300 "${task}_http.txt"))"
  same_scores "eval --task $task: in process and over HTTP (echo + logprobs)" "${task}_local.jsonl" "${task}_http.jsonl"
done
/usr/bin/python3 - <<'PY' && ok "results files: lm-eval's layout, speed and latency beside the scores" || bad "results layout"
import json
r = json.load(open("mc_local.json"))
m = r["results"]["mc"]
assert 0 <= m["acc,none"] <= 1 and "acc_stderr,none" in m and "acc_norm,none" in m, m
s = r["speed"]
assert s["samples_per_second"] > 0 and s["prompt_tokens"] > 0, s
assert s["latency"]["time_to_first_token_ms"] > 0 and s["latency"]["decode_ms_per_token"] > 0, s
assert r["n-samples"]["mc"]["effective"] == 3
h = json.load(open("hellaswag_local.json"))["results"]["hellaswag"]
assert 0 <= h["acc_norm,none"] <= 1
PY

# GSM8K: two worked examples from train.jsonl, greedy; the same text in process and over HTTP.
for where in local http; do
  extra=()
  [ "$where" = http ] && extra=(--endpoint "$url" --api-key secret-key)
  "$deepmoe" eval --model tmodel --task gsm8k --data gsm8k.jsonl --fewshot-data train.jsonl --num-fewshot 2 \
    --max-gen-toks 12 --out "gsm8k_$where.json" --log-samples "gsm8k_$where.jsonl" "${extra[@]}" >"gsm8k_$where.txt" 2>&1 ||
    bad "eval gsm8k $where ($(tail -c 300 "gsm8k_$where.txt"))"
done
/usr/bin/python3 - <<'PY' && ok "eval --task gsm8k: 2-shot prompts, both filters, the same generations over HTTP" || bad "gsm8k"
import json
a, b = ([json.loads(l) for l in open(f"gsm8k_{w}.jsonl")] for w in ("local", "http"))
assert len(a) == 2 and [x["response"] for x in a] == [y["response"] for y in b], (a, b)
assert a[0]["prompt"].count("Question:") == 3 and a[0]["prompt"].endswith("How many in all?\nAnswer:")
assert a[0]["target"].endswith("#### 1,005") and "strict-match" in a[0]["filtered"]
r = json.load(open("gsm8k_local.json"))
assert "exact_match,strict-match" in r["results"]["gsm8k"] and "exact_match_stderr,flexible-extract" in r["results"]["gsm8k"]
g = r["speed"]["generation"]
assert g["requests"] == 2 and g["time_to_first_token_ms"]["mean"] > 0
PY
expect_error "eval gsm8k: 5 shots need --fewshot-data" "fewshot-data" "$deepmoe" eval --model tmodel --task gsm8k --data gsm8k.jsonl
printf '%s\n' '{"question": "x"}' >gsm8k_bad.jsonl
expect_error "eval gsm8k: a problem without an answer" "gsm8k_bad.jsonl:1" "$deepmoe" eval --model tmodel --task gsm8k \
  --data gsm8k_bad.jsonl --num-fewshot 0

# HumanEval: one task that passes and one that fails, pass@1 = 0.5, the same over HTTP.
for where in local http; do
  extra=()
  [ "$where" = http ] && extra=(--endpoint "$url" --api-key secret-key)
  "$deepmoe" eval --model tmodel --task humaneval --data humaneval.jsonl --max-gen-toks 1 --timeout 20 \
    --out "humaneval_$where.json" --log-samples "humaneval_$where.jsonl" "${extra[@]}" >"humaneval_$where.txt" 2>&1 ||
    bad "eval humaneval $where ($(tail -c 300 "humaneval_$where.txt"))"
done
/usr/bin/python3 - <<'PY' && ok "eval --task humaneval: programs judged in the sandbox, pass@1 0.5, the same over HTTP" || bad "humaneval ($(head -c 600 humaneval_local.jsonl))"
import json
for where in ("local", "http"):
    s = [json.loads(l) for l in open(f"humaneval_{where}.jsonl")]
    assert [x["passed"] for x in s] == [True, False], s
    assert "the test fails" in s[1]["output_tail"], s[1]
    r = json.load(open(f"humaneval_{where}.json"))["results"]["humaneval"]
    assert r["pass@1,create_test"] == 0.5, r
PY
# Sampled: n = 3 per task with seeds, pass@1 and pass@2 from the same runs.
"$deepmoe" eval --model tmodel --task humaneval --data humaneval.jsonl --max-gen-toks 1 --samples 3 --pass-k 1,2 \
  --temperature 0.8 --seed 7 --out humaneval_n3.json >humaneval_n3.txt 2>&1 &&
  /usr/bin/python3 -c "
import json; r = json.load(open('humaneval_n3.json'))['results']['humaneval']
assert r['pass@1,create_test'] == 0.5 and r['pass@2,create_test'] == 0.5, r" &&
  ok "eval humaneval --samples 3 --pass-k 1,2" || bad "humaneval n=3 ($(tail -c 300 humaneval_n3.txt))"
expect_error "eval humaneval: k above the samples" "pass-k" "$deepmoe" eval --model tmodel --task humaneval \
  --data humaneval.jsonl --pass-k 5

# The endpoint's failures: one line each.
expect_error "eval --endpoint: a wrong key" "401" "$deepmoe" eval --model tmodel --data mc.jsonl --endpoint "$url" --api-key wrong
expect_error "eval --endpoint: nothing listening" "cannot reach" "$deepmoe" eval --model tmodel --data mc.jsonl \
  --endpoint http://127.0.0.1:9
expect_error "eval --endpoint: not a URL" "expected http" "$deepmoe" eval --model tmodel --data mc.jsonl --endpoint localhost:80
printf '%s\n' 'ctx' 7 a b c d >hellaswag_bad.txt
expect_error "eval hellaswag: a gold index outside 0-3" "hellaswag_bad.txt:2" "$deepmoe" eval --model tmodel \
  --task hellaswag --data hellaswag_bad.txt

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
