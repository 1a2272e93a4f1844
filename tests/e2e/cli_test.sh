#!/usr/bin/env bash
# The CLI as a user drives it: contracts of every subcommand, and one-line errors with a
# non-zero exit for bad flags, files and inputs. Prints "N passed, M failed".
set -u
deepmoe=$1
work=$2
here=$(cd "$(dirname "$0")" && pwd)
rm -rf "$work" && mkdir -p "$work" && cd "$work" || exit 1
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "PASS $1"; }
bad() { failed=$((failed + 1)); echo "FAIL $1"; }

# expect_error NAME PATTERN CMD...: non-zero exit, exactly one stderr line, containing PATTERN.
expect_error() {
  local name=$1 pattern=$2
  shift 2
  "$@" >out.txt 2>err.txt
  local rc=$?
  local lines
  lines=$(wc -l <err.txt)
  if [ "$rc" -ne 0 ] && [ "$rc" -lt 128 ] && [ "$lines" -eq 1 ] && grep -q -- "$pattern" err.txt; then
    ok "$name"
  else
    bad "$name (exit $rc, $lines stderr lines: $(head -c 300 err.txt))"
  fi
}

# The tiny model of these tests (vocabulary 300: a 280-id tokenizer leaves ids it cannot spell).
cp "$here/tiny_config.json" config.json

"$deepmoe" --help >/dev/null && ok "help" || bad "help"
for sub in info init logits generate bench tokenize detokenize chat-template tokenizer-train chat train eval; do
  "$deepmoe" $sub --help >/dev/null && ok "$sub --help" || bad "$sub --help"
done
"$deepmoe" init --config config.json --out model --seed 5 >/dev/null && ok "init" || bad "init"
"$deepmoe" info --model model >info.txt && grep -q "kv cache per token" info.txt && ok "info" || bad "info"

"$deepmoe" logits --model model --tokens 1,2,3,299 --out logits.npy 2>/dev/null &&
  /usr/bin/python3 -c "import numpy as n; a = n.load('logits.npy'); assert a.shape == (4, 300) and a.dtype == n.float32 and a.std() > 0" &&
  ok "logits writes [n_tokens, vocab] float32" || bad "logits writes [n_tokens, vocab] float32"

a=$("$deepmoe" generate --model model --tokens 5,6,7 -n 12 --temperature 0 --threads 1 2>/dev/null)
b=$("$deepmoe" generate --model model --tokens 5,6,7 -n 12 --temperature 0 --threads 2 2>/dev/null)
c=$("$deepmoe" generate --model model --tokens 5,6,7 -n 12 --temperature 0 --threads 2 2>/dev/null)
[ -n "$a" ] && [ "$a" = "$b" ] && [ "$b" = "$c" ] && [ "$(echo "$a" | tr ',' '\n' | wc -l)" -eq 12 ] &&
  ok "greedy generate is deterministic across runs and thread counts" || bad "greedy determinism ($a / $b / $c)"
s1=$("$deepmoe" generate --model model --tokens 5,6,7 -n 12 --temperature 1 --top-p 0.9 --seed 3 2>/dev/null)
s2=$("$deepmoe" generate --model model --tokens 5,6,7 -n 12 --temperature 1 --top-p 0.9 --seed 3 2>/dev/null)
[ -n "$s1" ] && [ "$s1" = "$s2" ] && ok "seeded sampling repeats" || bad "seeded sampling repeats"
"$deepmoe" generate --model model --tokens 5,6,7 -n 4 2>err.txt >/dev/null && grep -q "decode:.*tok/s" err.txt &&
  ok "generate reports tokens/s on stderr" || bad "generate reports tokens/s on stderr"

"$deepmoe" bench --model model --threads 1 --prompt 8 --gen 4 --reps 2 --json >bench.json &&
  /usr/bin/python3 -c "import json; d = json.load(open('bench.json')); assert all(d[k] > 0 for k in ('prefill_tok_s', 'decode_tok_s', 'peak_rss_mb'))" &&
  ok "bench --json" || bad "bench --json"

# Bad input: one line, non-zero exit, never a crash.
expect_error "unknown flag" "bogus" "$deepmoe" logits --model model --tokens 1 --out x.npy --bogus
expect_error "missing required flag" "tokens" "$deepmoe" logits --model model --out x.npy
expect_error "no subcommand" "subcommand" "$deepmoe"
expect_error "missing model directory" "no_such_dir" "$deepmoe" info --model no_such_dir
expect_error "malformed token list" "'x'" "$deepmoe" logits --model model --tokens 1,x,3 --out x.npy
expect_error "token outside vocabulary" "outside the vocabulary" "$deepmoe" logits --model model --tokens 1,300 --out x.npy
expect_error "negative temperature" "temperature" "$deepmoe" generate --model model --tokens 1 --temperature -1
expect_error "bad top-p" "top-p" "$deepmoe" generate --model model --tokens 1 --temperature 1 --top-p 1.5
expect_error "bad init dtype" "dtype" "$deepmoe" init --config config.json --out m2 --dtype f64

mkdir -p broken && cp model/config.json broken/
head -c 100 model/model.safetensors >broken/model.safetensors
expect_error "truncated safetensors" "model.safetensors" "$deepmoe" info --model broken
head -c 20000 /dev/urandom >broken/model.safetensors
expect_error "garbage safetensors" "model.safetensors" "$deepmoe" info --model broken
cp model/model.safetensors broken/ && echo '{"model_type": "deepseek_v3", "hidden_size": "wide"}' >broken/config.json
expect_error "bad config field" "hidden_size" "$deepmoe" info --model broken
echo '{"hidden_size": 64,' >broken/config.json
expect_error "config not JSON" "config.json" "$deepmoe" info --model broken
sed 's/"hidden_size": 64/"hidden_size": 80/' model/config.json >broken/config.json
expect_error "shape mismatch names the tensor" "expected shape" "$deepmoe" info --model broken

# Tokenizer commands on a tokenizer trained here (the comparison with HF is tokenizer_vs_hf.sh).
for i in $(seq 1 40); do echo "the quick brown fox jumps over the lazy dog $i times, then naps." ; done >text.txt
"$deepmoe" tokenizer-train --vocab-size 280 --out tok text.txt 2>/dev/null && [ -f tok/tokenizer.json ] &&
  ok "tokenizer-train" || bad "tokenizer-train"
ids=$("$deepmoe" tokenize --tokenizer tok --text "the lazy fox<｜User｜>é" 2>/dev/null)
text=$("$deepmoe" detokenize --tokenizer tok --ids "$ids" 2>/dev/null)
[ "$text" = "the lazy fox<｜User｜>é" ] && ok "tokenize / detokenize round trip" || bad "round trip ($ids -> $text)"
"$deepmoe" tokenize --tokenizer tok/tokenizer.json --text "dog" --json | grep -q '^\[[0-9,]*\]$' &&
  ok "tokenize --json, tokenizer.json path" || bad "tokenize --json"
printf '"a b"\n"c"\n' >lines.jsonl
[ "$("$deepmoe" tokenize --tokenizer tok --jsonl lines.jsonl | wc -l)" -eq 2 ] && ok "tokenize --jsonl" || bad "tokenize --jsonl"
echo '[{"role": "user", "content": "hi"}]' >messages.json
"$deepmoe" chat-template --tokenizer tok --messages messages.json --add-generation-prompt | grep -q "hi<｜Assistant｜>$" &&
  ok "chat-template" || bad "chat-template"
"$deepmoe" init --config config.json --out tmodel --seed 5 --tokenizer tok >/dev/null &&
  "$deepmoe" generate --model tmodel --prompt "the fox" -n 5 --temperature 0 >gen.txt 2>/dev/null && [ -s gen.txt ] &&
  ok "init --tokenizer, generate --prompt" || bad "generate --prompt"
printf 'hello\nagain\n' | "$deepmoe" chat --model tmodel -n 3 --temperature 0 >chat.txt 2>/dev/null &&
  [ "$(wc -l <chat.txt)" -eq 2 ] && ok "chat reads stdin line by line" || bad "chat"

expect_error "missing tokenizer" "no such file" "$deepmoe" tokenize --tokenizer nowhere --text x
/usr/bin/python3 -c "
import json; t = json.load(open('tok/tokenizer.json')); t['model']['type'] = 'Unigram'; json.dump(t, open('uni.json', 'w'))"
expect_error "unsupported tokenizer model" "Unigram" "$deepmoe" tokenize --tokenizer uni.json --text x
echo '{"model": {"type": "BPE", "vocab": {' >trunc.json
expect_error "truncated tokenizer.json" "not valid JSON" "$deepmoe" tokenize --tokenizer trunc.json --text x
expect_error "id outside the tokenizer" "99999" "$deepmoe" detokenize --tokenizer tok --ids 1,99999
printf '"ok"\n42\n' >badlines.jsonl
expect_error "jsonl line not a string" "badlines.jsonl:2" "$deepmoe" tokenize --tokenizer tok --jsonl badlines.jsonl
echo '[{"content": "no role"}]' >badmessages.json
expect_error "message without role" "role" "$deepmoe" chat-template --tokenizer tok --messages badmessages.json
echo '{% for m in messages %}{{ m.content | wordwrap }}{% endfor %}' >bad.jinja
expect_error "unsupported template filter" "wordwrap" "$deepmoe" chat-template --tokenizer tok --messages messages.json --template bad.jinja
expect_error "prompt without tokenizer" "tokenizer.json" "$deepmoe" generate --model model --prompt "hi"
expect_error "vocab too small to train" "vocab-size" "$deepmoe" tokenizer-train --vocab-size 10 --out t2 text.txt
# deepmoe eval: a multiple-choice JSONL scored end to end, and malformed tasks refused with one line.
printf '%s\n' '{"context": "the quick brown", "choices": [" fox", " dog naps"], "gold": 0}' \
  '{"context": "", "choices": ["the fox", "naps then"], "gold": 1}' >mc.jsonl
"$deepmoe" eval --model tmodel --data mc.jsonl --out mc_results.json --log-samples mc_samples.jsonl >mc.txt 2>&1 &&
  grep -q "^|mc  *|  *acc,none|" mc.txt && [ "$(wc -l <mc_samples.jsonl)" -eq 2 ] &&
  /usr/bin/python3 -c "import json,sys; r=json.load(open('mc_results.json'))['results']['mc']; sys.exit(0 if 0 <= r['acc,none'] <= 1 and 'acc_norm_stderr,none' in r else 1)" &&
  ok "eval --task mc: table, results file, samples" || bad "eval mc ($(head -c 300 mc.txt))"
printf '%s\n' '{"context": "a", "choices": [" b", " c"], "gold": 2}' >mc_bad_gold.jsonl
expect_error "eval: gold outside the choices" "mc_bad_gold.jsonl:1: 'gold'" "$deepmoe" eval --model tmodel --data mc_bad_gold.jsonl
printf '%s\n' '{"context": "a", "choices": [" b", " c"], "gold": 0}' 'not json' >mc_bad_line.jsonl
expect_error "eval: a line that is not JSON" "mc_bad_line.jsonl:2: not a JSON object" "$deepmoe" eval --model tmodel --data mc_bad_line.jsonl
expect_error "eval: a model without a tokenizer" "tokenizer" "$deepmoe" eval --model model --data mc.jsonl
# MMLU's CSV layout, one-shot, scored with the cached context and with the naive loop: the same answers
# and log-likelihoods within 1e-4.
mkdir -p mmlu/dev mmlu/test
printf '%s\n' '"Which animal, of these, is quick?",the fox,a stone,the river,old bread,A' >mmlu/dev/toy_facts_dev.csv
printf '%s\n' '"What naps?",the lazy dog,a river,"seven ""old"" stones",bread,A' 'Birds do what?,sing,melt,"rust, then fall",sleep,A' \
  >mmlu/test/toy_facts_test.csv
"$deepmoe" eval --model tmodel --task mmlu --data mmlu --num-fewshot 1 --log-samples mmlu_cached.jsonl >mmlu.txt 2>&1 &&
  "$deepmoe" eval --model tmodel --task mmlu --data mmlu --num-fewshot 1 --no-prefix-cache \
    --log-samples mmlu_naive.jsonl >mmlu_naive.txt 2>&1 && grep -q "^|mmlu_toy_facts  *|  *acc,none|" mmlu.txt &&
  /usr/bin/python3 - mmlu_cached.jsonl mmlu_naive.jsonl <<'PY' && ok "eval --task mmlu: one-shot, cached context = naive loop" ||
import json, sys
a, b = ([json.loads(l) for l in open(p)] for p in sys.argv[1:])
same = len(a) == 2 and all(x["pred"] == y["pred"] and x["context"].count("Answer:") == 2 and
    all(abs(p - q) <= 1e-4 * abs(q) for p, q in zip(x["logprobs"], y["logprobs"])) for x, y in zip(a, b))
sys.exit(0 if same else 1)
PY
  bad "eval mmlu ($(head -c 300 mmlu.txt))"
# deepmoe sft: conversations through the chat template and plain completions, then a checkpoint
# resumed; malformed lines refused naming file:line.
printf '%s\n' '{"messages": [{"role": "user", "content": "the quick brown"}, {"role": "assistant", "content": "fox jumps"}]}' \
  '{"prompt": "the lazy", "completion": " dog naps"}' >sft.jsonl
"$deepmoe" sft --init tmodel --data sft.jsonl --val-data sft.jsonl --seq 16 --batch 2 --steps 3 --eval-every 3 \
  --save-every 2 --out sft_out >sft.txt 2>&1 && grep -q "sft: 2 examples" sft.txt && [ -f sft_out/model.safetensors ] &&
  [ -f sft_out/tokenizer.json ] && [ "$(wc -l <sft_out/metrics.jsonl)" -eq 3 ] &&
  ok "sft: conversations and completions, validation, checkpoints" || bad "sft ($(tail -c 300 sft.txt))"
printf '%s\n' '{"prompt": "the lazy", "completion": " dog naps"}' '{"messages": [{"role": "user", "content": "hi"}]}' >sft_no_turn.jsonl
expect_error "sft: a conversation without an assistant turn" "sft_no_turn.jsonl:2: the conversation has no assistant turn" \
  "$deepmoe" sft --init tmodel --data sft_no_turn.jsonl --seq 16 --batch 1 --steps 1 --out sft_bad
printf '%s\n' '{"prompt": "the lazy"}' >sft_no_completion.jsonl
expect_error "sft: a line without a completion" "sft_no_completion.jsonl:1: 'completion'" \
  "$deepmoe" sft --init tmodel --data sft_no_completion.jsonl --seq 16 --batch 1 --steps 1 --out sft_bad
# deepmoe dpo: plain and conversational pairs, the reference scored once and cached for --resume,
# accuracy and margins per step; a pair whose replies are equal refused naming file:line.
printf '%s\n' '{"prompt": "the quick brown", "chosen": " fox jumps", "rejected": " dog naps"}' \
  '{"messages": [{"role": "user", "content": "the lazy"}], "chosen": "dog naps", "rejected": "fox"}' >pairs.jsonl
"$deepmoe" dpo --init tmodel --data pairs.jsonl --val-data pairs.jsonl --seq 24 --batch 2 --steps 2 --eval-every 2 \
  --save-every 1 --beta 0.2 --out dpo_out >dpo.txt 2>&1 && grep -q "scored them" dpo.txt &&
  /usr/bin/python3 -c "
import json; m = [json.loads(l) for l in open('dpo_out/metrics.jsonl')]
assert len(m) == 2 and 0 <= m[0]['accuracy'] <= 1 and 'margin' in m[0] and 'val_accuracy' in m[1], m" &&
  "$deepmoe" dpo --init tmodel --data pairs.jsonl --val-data pairs.jsonl --seq 24 --batch 2 --steps 3 --save-every 1 --beta 0.2 --resume \
    --out dpo_out >dpo_resume.txt 2>&1 && grep -q "log-probabilities from dpo_out/dpo_reference.json" dpo_resume.txt &&
  ok "dpo: pairs, accuracy and margins, the reference cached and reused on --resume" ||
  bad "dpo ($(tail -c 300 dpo.txt) $(tail -c 300 dpo_resume.txt 2>/dev/null))"
printf '%s\n' '{"prompt": "the", "chosen": " fox", "rejected": " fox"}' >pairs_equal.jsonl
expect_error "dpo: a pair whose replies are equal" "pairs_equal.jsonl:1: 'chosen' and 'rejected' are the same" \
  "$deepmoe" dpo --init tmodel --data pairs_equal.jsonl --seq 16 --batch 1 --steps 1 --out dpo_bad
# deepmoe grpo: completions sampled from the model being trained, an external reward (alternate 1s
# and 0s, so groups have advantages), reward, KL and clip fraction per step, every completion logged,
# the reward plot; stopped after 2 steps and resumed, the same model bit for bit; a reward program
# that prints garbage or crashes skips the update with a warning and the run goes on; a --seq too
# short for a prompt and its completion is refused.
printf '%s\n' '{"prompt": "the quick brown", "answer": "7"}' '{"prompt": "the lazy dog", "answer": "3"}' >grpo.jsonl
grpo_run() {
  "$deepmoe" grpo --init tmodel --prompts grpo.jsonl --group 4 --max-tokens 6 --seq 20 --batch 2 --lr 1e-2 \
    --reward-cmd "awk '{print NR % 2}'" --save-every 1 "$@"
}
grpo_run --steps 3 --log-rollouts grpo_rollouts.jsonl --out grpo_out >grpo.txt 2>&1 &&
  /usr/bin/python3 -c "
import json; m = [json.loads(l) for l in open('grpo_out/metrics.jsonl')]
assert len(m) == 3 and all(abs(x['reward'] - 0.5) < 1e-9 and x['skipped'] == 0 for x in m), m
assert m[0]['kl'] == 0 and m[2]['kl'] > 0 and m[0]['grad_norm'] > 0 and all(x['logprob_gap'] < 0.2 for x in m), m
r = [json.loads(l) for l in open('grpo_rollouts.jsonl')]
assert len(r) == 24 and all(len(x['tokens']) == len(x['logprobs']) > 0 for x in r), r[:2]" &&
  [ -s grpo_out/reward.svg ] &&
  ok "grpo: rollouts from the trained weights, group advantages, KL to the start, logged" || bad "grpo ($(tail -c 400 grpo.txt))"
grpo_run --steps 2 --out grpo_resumed >grpo_resume.txt 2>&1 && grpo_run --steps 3 --resume --out grpo_resumed >>grpo_resume.txt 2>&1 &&
  cmp -s grpo_out/model.safetensors grpo_resumed/model.safetensors &&
  ok "grpo: stopped and resumed, the same weights bit for bit" || bad "grpo resume ($(tail -c 300 grpo_resume.txt))"
"$deepmoe" grpo --init tmodel --prompts grpo.jsonl --group 2 --max-tokens 4 --seq 20 --batch 2 --steps 2 \
  --reward-cmd "cat >/dev/null; echo garbage" --out grpo_skip >grpo_skip.txt 2>&1 &&
  [ "$(grep -c "update is skipped: --reward-cmd printed 'garbage'" grpo_skip.txt)" -eq 2 ] && [ -f grpo_skip/model.safetensors ] &&
  /usr/bin/python3 -c "
import json; m = [json.loads(l) for l in open('grpo_skip/metrics.jsonl')]
assert all(x['skipped'] == 1 for x in m), m" &&
  ok "grpo: a reward program that prints garbage skips the step, the run goes on" || bad "grpo skip ($(tail -c 300 grpo_skip.txt))"
"$deepmoe" grpo --init tmodel --prompts grpo.jsonl --group 2 --max-tokens 4 --seq 20 --batch 2 --steps 1 \
  --reward-cmd "kill -SEGV \$\$" --out grpo_crash >grpo_crash.txt 2>&1 && grep -q "update is skipped: --reward-cmd was killed by signal 11" grpo_crash.txt &&
  [ -f grpo_crash/model.safetensors ] &&
  ok "grpo: a reward program that crashes skips the step" || bad "grpo crash ($(tail -c 300 grpo_crash.txt))"
expect_error "grpo: --seq too short for a prompt and its completion" "raise --seq" \
  "$deepmoe" grpo --init tmodel --prompts grpo.jsonl --group 2 --max-tokens 16 --seq 8 --batch 1 --steps 1 --out grpo_bad
sed 's/"vocab_size": 300/"vocab_size": 100/' config.json >config_small_vocab.json
expect_error "tokenizer larger than the model" "vocab_size" "$deepmoe" init --config config_small_vocab.json --out m3 --tokenizer tok
"$deepmoe" init --config config_small_vocab.json --out small_vocab --seed 2 >/dev/null
expect_error "grpo: a reference of another vocabulary" "has a vocabulary of 100 tokens" \
  "$deepmoe" grpo --init tmodel --reference small_vocab --prompts grpo.jsonl --group 2 --max-tokens 4 --seq 20 --batch 1 \
  --steps 1 --out grpo_bad
expect_error "dpo: a reference of another vocabulary" "has a vocabulary of 100 tokens" \
  "$deepmoe" dpo --init tmodel --reference small_vocab --data pairs.jsonl --seq 24 --batch 1 --steps 1 --out dpo_bad

# Training: a few steps run and write a loadable model; bad data and flags are refused.
/usr/bin/python3 -c "import numpy as n; n.random.default_rng(1).integers(0, 300, 2000, dtype=n.uint32).tofile('tokens.u32')"
"$deepmoe" train --init model --data tokens.u32 --seq 16 --batch 2 --steps 3 --lr 1e-3 --out trained >train.txt 2>&1 &&
  [ "$(wc -l <trained/metrics.jsonl)" -eq 3 ] && "$deepmoe" info --model trained >/dev/null &&
  /usr/bin/python3 -c "import xml.dom.minidom as m; [m.parse('trained/' + f) for f in ('loss.svg', 'lr.svg', 'expert_load.svg')]" &&
  ok "train writes metrics and a loadable model" || bad "train ($(tail -c 300 train.txt))"
# Checkpoints: resuming reproduces the uninterrupted run's losses exactly; a half-written
# checkpoint (what a kill during a save leaves) is ignored; only the last K are kept.
common=(--init model --data tokens.u32 --seq 16 --batch 2 --lr 1e-3 --schedule constant --save-every 2 --keep-last 2)
"$deepmoe" train "${common[@]}" --steps 6 --out full >/dev/null 2>&1
"$deepmoe" train "${common[@]}" --steps 4 --out part >/dev/null 2>&1
mkdir -p part/checkpoints/step-6.partial && echo garbage >part/checkpoints/step-6.partial/model.safetensors
"$deepmoe" train "${common[@]}" --steps 6 --resume --out part >resume.txt 2>&1
losses() { /usr/bin/python3 -c "import json,sys; print([json.loads(l)['loss'] for l in open(sys.argv[1])])" "$1"; }
[ -n "$(losses full/metrics.jsonl)" ] && [ "$(losses full/metrics.jsonl)" = "$(losses part/metrics.jsonl)" ] &&
  grep -q "step 4" resume.txt && ok "resume reproduces the losses bit for bit" ||
  bad "resume ($(losses full/metrics.jsonl) vs $(losses part/metrics.jsonl))"
[ "$(ls full/checkpoints | tr '\n' ' ')" = "step-4 step-6 " ] && "$deepmoe" info --model full/checkpoints/step-6 >/dev/null &&
  ok "keeps the last 2 checkpoints, each loadable" || bad "keep-last ($(ls full/checkpoints | tr '\n' ' '))"
# --recompute: the same losses bit for bit, fewer activation bytes; --precision bf16 tracks f32.
"$deepmoe" train "${common[@]}" --steps 6 --recompute --out recomputed >recompute.txt 2>&1
activations() { sed -n 's/^memory: activations \([0-9.]*\) MiB.*/\1/p' "$1"; }
"$deepmoe" train "${common[@]}" --steps 6 --out full_again >full_again.txt 2>&1
[ "$(losses full/metrics.jsonl)" = "$(losses recomputed/metrics.jsonl)" ] &&
  /usr/bin/python3 -c "import sys; sys.exit(not float(sys.argv[1]) < float(sys.argv[2]))" \
    "$(activations recompute.txt)" "$(activations full_again.txt)" &&
  ok "recompute: identical losses, $(activations recompute.txt) vs $(activations full_again.txt) MiB of activations" ||
  bad "recompute ($(losses recomputed/metrics.jsonl); $(tail -c 200 recompute.txt))"
"$deepmoe" train "${common[@]}" --steps 6 --precision bf16 --out bf16 >bf16.txt 2>&1 &&
  /usr/bin/python3 - full/metrics.jsonl bf16/metrics.jsonl <<'PY' && ok "bf16 losses within 1% of f32" || bad "bf16 ($(tail -c 200 bf16.txt))"
import json, sys
f32, bf16 = ([json.loads(l)["loss"] for l in open(p)] for p in sys.argv[1:])
sys.exit(not (len(f32) == len(bf16) == 6 and all(abs(a - b) <= 0.01 * a for a, b in zip(f32, bf16))))
PY
# kill -9 while checkpoints are being written (a model whose checkpoint is ~100 MB, saved every
# step): the kill comes as soon as a step-N.partial directory shows up, plus a random few ms, so
# it lands inside a save; the newest complete checkpoint must always load and resume.
sed 's/"vocab_size": 300, "hidden_size": 64/"vocab_size": 32000, "hidden_size": 128/' config.json >config_big.json
"$deepmoe" init --config config_big.json --out big --seed 2 >/dev/null
/usr/bin/python3 -c "import numpy as n; n.random.default_rng(1).integers(0, 32000, 4000, dtype=n.uint32).tofile('big.u32')"
big=(--init big --data big.u32 --seq 8 --batch 1 --lr 1e-3 --save-every 1 --keep-last 2 --threads 1)
hits=0 usable=1
for attempt in 1 2 3 4 5 6 7 8; do
  "$deepmoe" train "${big[@]}" --steps 100000 --out killed >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 400); do [ -f killed/checkpoints/step-1/state.json ] && break; sleep 0.05; done
  for _ in $(seq 200000); do compgen -G "killed/checkpoints/*.partial" >/dev/null && break; done
  sleep "0.0$((RANDOM % 5))"
  kill -9 "$pid"
  wait "$pid" 2>/dev/null
  ls killed/checkpoints | grep -q partial && hits=$((hits + 1))
  newest=$(ls -d killed/checkpoints/step-* 2>/dev/null | grep -v '\.' | sort -t- -k2 -n | tail -1)
  step=${newest##*step-}
  if ! "$deepmoe" info --model "$newest" >/dev/null 2>&1 ||
     ! "$deepmoe" train "${big[@]}" --steps $((step + 1)) --resume --out killed >/dev/null 2>&1; then
    usable=0
    break
  fi
  [ "$hits" -ge 2 ] && break
done
[ "$usable" -eq 1 ] && [ "$hits" -ge 1 ] && ok "kill -9 during saves ($hits of $attempt mid-save): the newest checkpoint loads and resumes" ||
  bad "kill -9 during save (usable $usable, mid-save hits $hits, newest $newest)"
# A full disk during a save: one error line naming the checkpoint, the previous checkpoints kept
# and loadable, nothing half-written left. A 6 MiB tmpfs holds two of this model's checkpoints
# (~2.3 MiB each), not three; it needs a mount namespace (root or user namespaces).
full_disk() {
  mkdir -p disk && mount -t tmpfs -o size=6m tmpfs disk || return 2
  "$deepmoe" train "${common[@]}" --steps 8 --out disk/run >disk_out.txt 2>disk_err.txt
  local rc=$?
  [ "$rc" -ne 0 ] && [ "$rc" -lt 128 ] && [ "$(wc -l <disk_err.txt)" -eq 1 ] && grep -q "No space left" disk_err.txt &&
    grep -q "previous checkpoints are kept" disk_err.txt && [ "$(ls disk/run/checkpoints | tr '\n' ' ')" = "step-2 step-4 " ] &&
    "$deepmoe" info --model disk/run/checkpoints/step-4 >/dev/null
}
if unshare -rm true 2>/dev/null; then
  common_text="${common[*]}"
  deepmoe="$deepmoe" unshare -rm bash -c "common=($common_text); $(declare -f full_disk); full_disk" &&
    ok "full disk during a save: clear error, previous checkpoints kept" ||
    bad "full disk ($(cat disk_err.txt 2>/dev/null | head -c 300))"
else
  echo "SKIP full disk: no mount namespace here (unshare -rm)"
fi
expect_error "a diverging run stops with a clear message" "diverged" "$deepmoe" train --init model --data tokens.u32 \
  --seq 16 --batch 2 --steps 6 --lr 1e30 --clip 0 --out diverged
expect_error "resume without checkpoints" "no checkpoint" "$deepmoe" train --init model --data tokens.u32 --resume --out empty
head -c 4001 tokens.u32 >odd.u32
expect_error "token file not whole uint32" "odd.u32" "$deepmoe" train --init model --data odd.u32 --seq 16 --out t2
expect_error "train without a model" "--init" "$deepmoe" train --data tokens.u32 --out t3
expect_error "negative learning rate" "--lr" "$deepmoe" train --init model --data tokens.u32 --lr -1 --out t4

# ppl scores the windows validation reads, with the inference forward pass: the same number.
head -c 260 tokens.u32 >val.u32  # 65 tokens: 4 windows of 16
"$deepmoe" train --init model --data tokens.u32 --val-data val.u32 --seq 16 --batch 2 --steps 2 --eval-every 2 \
  --lr 1e-3 --out with_val >/dev/null 2>&1
"$deepmoe" ppl --model with_val --data val.u32 --seq 16 --json >ppl.json 2>ppl_err.txt &&
  /usr/bin/python3 - with_val/metrics.jsonl ppl.json <<'PY' && ok "ppl equals training's validation loss" || bad "ppl ($(cat ppl.json ppl_err.txt | head -c 300))"
import json, math, sys
val = [json.loads(l) for l in open(sys.argv[1])][-1]["val_loss"]
ppl = json.load(open(sys.argv[2]))
sys.exit(not (ppl["windows"] == 4 and abs(ppl["cross_entropy"] - val) <= 1e-5 * val
              and abs(ppl["perplexity"] - math.exp(val)) <= 1e-4 * math.exp(val)))
PY
expect_error "ppl: window longer than the data" "seq" "$deepmoe" ppl --model with_val --data val.u32 --seq 100
expect_error "ppl: missing token file" "no_such.u32" "$deepmoe" ppl --model with_val --data no_such.u32
# GGUF export (its contents are checked against a numpy reference in tests/reference).
"$deepmoe" convert --to gguf --model model --out model.gguf --type q4_0 >/dev/null && [ "$(head -c 4 model.gguf)" = "GGUF" ] &&
  ok "convert --to gguf writes a GGUF file" || bad "convert --to gguf"
# A .gguf loads wherever a model directory does: f32 gives the HF model's logits bit for bit,
# q8_0 stays close (its error is the quantization's).
"$deepmoe" convert --to gguf --model model --out model_f32.gguf >/dev/null
"$deepmoe" convert --to gguf --model model --out model_q8.gguf --type q8_0 >/dev/null
"$deepmoe" logits --model model --tokens 5,17,42,99,3,250,7,8 --out hf_logits.npy &&
  "$deepmoe" logits --model model_f32.gguf --tokens 5,17,42,99,3,250,7,8 --out f32_logits.npy &&
  "$deepmoe" logits --model model_q8.gguf --tokens 5,17,42,99,3,250,7,8 --out q8_logits.npy &&
  "$deepmoe" info --model model_q8.gguf >/dev/null &&
  /usr/bin/python3 -c "
import numpy as n, sys
ref, f32, q8 = (n.load(f) for f in ('hf_logits.npy', 'f32_logits.npy', 'q8_logits.npy'))
# Q8_0 products also round activations to Q8_0 (as llama.cpp does): on this tiny random model
# that moves routing, hence a loose bound.
sys.exit(not ((f32 == ref).all() and 0 < n.linalg.norm(q8 - ref) / n.linalg.norm(ref) < 0.25))" &&
  ok "a .gguf loads as a model: f32 logits identical, q8_0 close" || bad "gguf as a model"
# The tokenizer travels inside the .gguf: greedy generation from text is the same as from the
# HF directory.
"$deepmoe" init --config config.json --out model_tok --seed 5 --tokenizer tok >/dev/null
"$deepmoe" convert --to gguf --model model_tok --out model_tok.gguf >/dev/null &&
  "$deepmoe" generate --model model_tok --prompt "the quick brown" -n 12 --temperature 0 >gen_hf.txt 2>/dev/null &&
  "$deepmoe" generate --model model_tok.gguf --prompt "the quick brown" -n 12 --temperature 0 >gen_gguf.txt 2>/dev/null &&
  [ -s gen_hf.txt ] && cmp -s gen_hf.txt gen_gguf.txt &&
  ok "generate from a .gguf with its own tokenizer: same text as the HF directory" ||
  bad "gguf tokenizer ($(head -c 100 gen_hf.txt) vs $(head -c 100 gen_gguf.txt))"
printf 'GGUF\x03\x00\x00\x00' >broken.gguf
expect_error "a corrupt .gguf is one error" "broken.gguf" "$deepmoe" info --model broken.gguf
expect_error "convert: unknown target" "--to" "$deepmoe" convert --to onnx --model model --out x.gguf
expect_error "convert: unknown type" "--type" "$deepmoe" convert --to gguf --model model --out x.gguf --type q2_k
expect_error "convert: missing model" "config.json" "$deepmoe" convert --to gguf --model no_such_dir --out x.gguf
expect_error "convert: unwritable output" "x.gguf" "$deepmoe" convert --to gguf --model model --out no_such_dir/x.gguf

# convert --to hf: a .gguf back to a directory; f32 gives the same logits bit for bit.
"$deepmoe" convert --to hf --model model_f32.gguf --out from_gguf >/dev/null &&
  "$deepmoe" logits --model from_gguf --tokens 5,17,42,99,3,250,7,8 --out from_gguf_logits.npy 2>/dev/null &&
  cmp -s <(tail -c +200 f32_logits.npy) <(tail -c +200 from_gguf_logits.npy) &&
  ok "convert --to hf from a .gguf: identical logits" || bad "convert --to hf"
# The GGUF's attn_k_b/attn_v_b are read as they are for the absorbed form, but the directory
# holds HF's names only (kv_b_proj, joined from them).
if ! grep -aq "self_attn\.[kv]_b_proj" from_gguf/*.safetensors && grep -aq "kv_b_proj" from_gguf/*.safetensors; then
  ok "convert --to hf from a .gguf: HF tensor names only"
else
  bad "convert --to hf wrote deepmoe's own k_b_proj/v_b_proj"
fi

# quantize: every type loads with no extra flag, its logits close to the original's (random
# weights, so the bounds are loose), and the kept tensors keep their dtype.
tokens=5,17,42,99,3,250,7,8
"$deepmoe" logits --model model --tokens $tokens --out base_logits.npy 2>/dev/null
for spec in "w8 0.05" "q8_0 0.25" "w4g32 0.6" "w4g32_asym 0.6" "q4_0 0.6" "w8a8 0.08 --activations dynamic"; do
  set -- $spec
  type=$1 bound=$2
  shift 2
  rm -rf "q_$type"
  "$deepmoe" quantize --model model --type "$type" --out "q_$type" "$@" >/dev/null 2>q_err.txt &&
    "$deepmoe" logits --model "q_$type" --tokens $tokens --out "q_$type.npy" 2>/dev/null &&
    "$deepmoe" generate --model "q_$type" --tokens 5,6,7 -n 4 --temperature 0 >/dev/null 2>&1 &&
    /usr/bin/python3 -c "
import numpy as n, sys
a, b = n.load('q_$type.npy'), n.load('base_logits.npy')
rel = n.linalg.norm(a - b) / n.linalg.norm(b)
print('$type', rel); sys.exit(not (0 < rel < $bound))" >>q_rel.txt &&
    ok "quantize --type $type: loads, generates, logits close" || bad "quantize $type ($(cat q_err.txt | head -c 200); $(tail -1 q_rel.txt))"
done
# From a .gguf: its attn_k_b/attn_v_b are joined back into kv_b_proj only for the output, which
# holds HF names only and gives the HF directory's w8 logits bit for bit.
"$deepmoe" quantize --model model_f32.gguf --type w8 --out q_gguf_w8 >/dev/null 2>&1 &&
  "$deepmoe" logits --model q_gguf_w8 --tokens $tokens --out q_gguf_w8.npy 2>/dev/null &&
  cmp -s <(tail -c +200 q_gguf_w8.npy) <(tail -c +200 q_w8.npy) &&
  grep -aq "kv_b_proj" q_gguf_w8/model.safetensors && ! grep -aq "self_attn\.[kv]_b_proj" q_gguf_w8/model.safetensors &&
  ok "quantize from a .gguf: kv_b_proj rejoined, same logits as from the directory" || bad "quantize from a .gguf"
"$deepmoe" quantize --model model --type w8a8 --calibration val.u32 --calib-tokens 64 --calib-seq 16 --out q_w8a8s >/dev/null &&
  "$deepmoe" logits --model q_w8a8s --tokens $tokens --out q_w8a8s.npy 2>/dev/null &&
  /usr/bin/python3 - <<'PY' && ok "quantize w8a8 with static calibration" || bad "quantize w8a8 static"
import json, struct, numpy as n, sys
raw = open("q_w8a8s/model.safetensors", "rb").read()
header = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
scales = [k for k in header if k.endswith(".input_scale")]
a, b = n.load("q_w8a8s.npy"), n.load("base_logits.npy")
# One range per tensor is coarser than dynamic's per token: looser than w8a8 dynamic above.
sys.exit(not (len(scales) > 10 and 0 < n.linalg.norm(a - b) / n.linalg.norm(b) < 0.25))
PY
"$deepmoe" quantize --model model --type w8 --keep 'model\.layers\.0\..*' --out q_keep >/dev/null &&
  /usr/bin/python3 - <<'PY' && ok "quantize --keep leaves matching tensors alone" || bad "quantize --keep"
import json, struct, sys
def header(path):
    raw = open(path, "rb").read(1 << 20)
    return json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
h = header("q_keep/model.safetensors")
ok = (h["model.layers.0.self_attn.o_proj.weight"]["dtype"] == "F32" and
      h["model.layers.1.self_attn.o_proj.weight"]["dtype"] == "I8" and
      h["model.embed_tokens.weight"]["dtype"] == "F32" and h["model.layers.1.mlp.gate.weight"]["dtype"] == "F32" and
      "model.layers.0.self_attn.o_proj.weight_scale" not in h)
sys.exit(not ok)
PY
"$deepmoe" convert --to hf --model q_w8 --out q_w8_back >/dev/null &&
  "$deepmoe" logits --model q_w8_back --tokens $tokens --out q_w8_back.npy 2>/dev/null &&
  /usr/bin/python3 -c "import numpy as n, sys; sys.exit(not n.allclose(n.load('q_w8_back.npy'), n.load('q_w8.npy'), rtol=1e-4, atol=1e-5))" &&
  ok "convert --to hf dequantizes a quantized directory" || bad "convert --to hf of a quantized directory"
expect_error "quantize: unknown type" "--type" "$deepmoe" quantize --model model --type w3 --out q_bad
expect_error "quantize: bad regex" "--keep" "$deepmoe" quantize --model model --type w8 --keep '(' --out q_bad
expect_error "quantize: w8a8 static needs calibration" "--calibration" "$deepmoe" quantize --model model --type w8a8 --out q_bad
expect_error "quantize: already quantized" "already quantized" "$deepmoe" quantize --model q_w8 --type w8 --out q_bad
cp -r q_w4g32 q_noconfig && /usr/bin/python3 -c "
import json; c = json.load(open('q_noconfig/config.json')); c['quantization_config']['format'] = 'q8_0'; json.dump(c, open('q_noconfig/config.json', 'w'))"
expect_error "quantized weights that disagree with config.json" "q_noconfig" "$deepmoe" info --model q_noconfig

# Resume verifies a checkpoint (the checksums in its state.json, its config) before using it: a
# corrupt newest one is skipped with one warning line and the one before resumes exactly (and the
# corrupt step is saved again over it); a checkpoint of another model with the same parameter
# count is refused; with no good checkpoint left, one error line.
flip_bit() {  # near the end of the file: a float's bits, the file still well-formed
  /usr/bin/python3 -c "
import sys; f = open(sys.argv[1], 'r+b'); f.seek(-3, 2); b = f.read(1); f.seek(-3, 2); f.write(bytes([b[0] ^ 1]))" "$1"
}
"$deepmoe" train "${common[@]}" --steps 4 --out fallback >/dev/null 2>&1
flip_bit fallback/checkpoints/step-4/model.safetensors
"$deepmoe" train "${common[@]}" --steps 6 --resume --out fallback >fallback_out.txt 2>fallback_err.txt
rc=$?
[ "$rc" -eq 0 ] && [ "$(wc -l <fallback_err.txt)" -eq 1 ] &&
  grep -q "warning: .*fallback/checkpoints/step-4: .*step-4/model.safetensors: corrupt" fallback_err.txt &&
  grep -q "resuming from .*step-2 (step 2)" fallback_out.txt &&
  [ "$(losses full/metrics.jsonl)" = "$(losses fallback/metrics.jsonl)" ] &&
  [ "$(ls fallback/checkpoints | tr '\n' ' ')" = "step-4 step-6 " ] &&
  "$deepmoe" info --model fallback/checkpoints/step-4 >/dev/null &&
  ok "resume skips a corrupt newest checkpoint with one warning line and resumes the previous one exactly" ||
  bad "resume past a corrupt checkpoint (exit $rc: $(head -c 300 fallback_err.txt))"
sed 's/"topk_group": 2}/"topk_group": 2, "rope_theta": 50000.0}/' config.json >config_rope.json
"$deepmoe" init --config config_rope.json --out model_rope --seed 5 >/dev/null
"$deepmoe" train "${common[@]}" --steps 2 --out other_config >/dev/null 2>&1
expect_error "resume refuses a checkpoint of another config with the same parameter count" \
  "another model: its config.json has rope_theta 10000, this run's has 50000" "$deepmoe" train --init model_rope \
  --data tokens.u32 --seq 16 --batch 2 --lr 1e-3 --schedule constant --save-every 2 --keep-last 2 --steps 4 --resume \
  --out other_config
"$deepmoe" train "${common[@]}" --steps 2 --out only_corrupt >/dev/null 2>&1
flip_bit only_corrupt/checkpoints/step-2/model.safetensors
expect_error "resume with only a corrupt checkpoint: one error line" \
  "no usable checkpoint.*step-2/model.safetensors: corrupt" \
  "$deepmoe" train "${common[@]}" --steps 4 --resume --out only_corrupt
# Multi-token prediction: train adds an MTP module, speculative decoding gives plain decoding's
# tokens, the module survives GGUF and is carried unchanged by a run that does not train it.
/usr/bin/python3 -c "import numpy as n; (n.arange(6000) * 7 % 97 * 3 % 300).astype(n.uint32).tofile('periodic.u32')"
"$deepmoe" train --init model --data periodic.u32 --seq 32 --batch 4 --steps 40 --lr 3e-3 --mtp-depth 1 \
  --out mtp >mtp_train.txt 2>&1 && grep -q "mtp_loss" mtp/metrics.jsonl &&
  grep -q '"num_nextn_predict_layers": 1' mtp/config.json && "$deepmoe" info --model mtp | grep -q "multi-token pred.  1 module" &&
  ok "train --mtp-depth adds and trains an MTP module" || bad "train --mtp-depth ($(tail -c 300 mtp_train.txt))"
plain=$("$deepmoe" generate --model mtp --tokens 21,147,144 -n 50 --temperature 0 2>/dev/null)
all_same=1
for k in 1 2 4; do
  spec=$("$deepmoe" generate --model mtp --tokens 21,147,144 -n 50 --temperature 0 --speculative mtp:$k 2>spec_err.txt)
  [ -n "$plain" ] && [ "$spec" = "$plain" ] || all_same=0
done
[ "$all_same" -eq 1 ] && ok "greedy speculative decoding (mtp:1, 2, 4) gives plain decoding's tokens" ||
  bad "greedy speculative decoding differs ($plain / $spec)"
/usr/bin/python3 - spec_err.txt <<'PY' && ok "speculative decoding reports acceptance (high on learned data)" ||
import re, sys
line = open(sys.argv[1]).read()
m = re.search(r"(\d+) of (\d+) drafts accepted", line)
assert m and int(m.group(1)) > 0.8 * int(m.group(2)), line
PY
  bad "speculative acceptance ($(cat spec_err.txt))"
"$deepmoe" convert --to gguf --model mtp --out mtp.gguf --type f32 >/dev/null &&
  "$deepmoe" logits --model mtp --tokens 5,6,7,8 --mtp --out mtp_hf.npy &&
  "$deepmoe" logits --model mtp.gguf --tokens 5,6,7,8 --mtp --out mtp_gguf.npy && cmp -s mtp_hf.npy mtp_gguf.npy &&
  ok "the MTP module survives GGUF (blk.N.nextn.*)" || bad "the MTP module survives GGUF"
"$deepmoe" train --init mtp --data periodic.u32 --seq 32 --batch 4 --steps 2 --lr 3e-3 --out mtp_frozen >/dev/null 2>&1 &&
  /usr/bin/python3 - "$here/../reference" <<'PY' && ok "a run without --mtp-depth carries the MTP module unchanged" ||
import sys
sys.path.insert(0, sys.argv[1])
from safetensors_io import read_safetensors
a, b = read_safetensors("mtp/model.safetensors"), read_safetensors("mtp_frozen/model.safetensors")
mtp = [n for n in a if n.startswith("model.layers.2.")]
assert mtp and all((a[n] == b[n]).all() for n in mtp), "an MTP tensor changed"
assert any(not (a[n] == b[n]).all() for n in a if n not in mtp), "nothing trained"
PY
  bad "a run without --mtp-depth carries the MTP module unchanged"
"$deepmoe" train --init mtp --data periodic.u32 --seq 32 --batch 4 --steps 2 --lr 3e-3 --mtp-depth 2 \
  --out mtp2 >/dev/null 2>&1 && "$deepmoe" info --model mtp2 | grep -q "multi-token pred.  2 module" &&
  ok "--mtp-depth 2 adds a second module to a model holding one" || bad "--mtp-depth 2 adds a second module"
expect_error "--mtp-depth below the modules held" "holds 2 multi-token-prediction modules" "$deepmoe" train \
  --init mtp2 --data periodic.u32 --seq 32 --batch 4 --steps 1 --mtp-depth 1 --out x_mtp_bad
expect_error "--speculative without an MTP module" "no.*multi-token-prediction\|has none" "$deepmoe" generate \
  --model model --tokens 1,2 --speculative mtp:2
expect_error "--speculative with a bad spec" "expected mtp:K or draft:DIR:K" "$deepmoe" generate --model mtp --tokens 1,2 \
  --speculative mtp:99
spec=$("$deepmoe" generate --model mtp --tokens 21,147,144 -n 50 --temperature 0 --speculative draft:mtp:3 2>spec_err.txt)
[ "$spec" = "$plain" ] && grep -q "150 of 150 drafts accepted\|of .* drafts accepted (100.0%)" spec_err.txt &&
  ok "a draft model (the model itself: every draft accepted) gives plain decoding's tokens" ||
  bad "draft model speculation ($(cat spec_err.txt))"
sed 's/"vocab_size": 300/"vocab_size": 310/' config.json >config_310.json
"$deepmoe" init --config config_310.json --out model_310 --seed 5 >/dev/null
expect_error "a draft model of another vocabulary" "must share the tokenizer" "$deepmoe" generate --model mtp \
  --tokens 1,2 --speculative draft:model_310:2
spec=$("$deepmoe" generate --model mtp --tokens 21,147,144 -n 50 --temperature 0 --speculative mtp:2 --draft-vocab 150 2>/dev/null)
[ "$spec" = "$plain" ] && ok "--draft-vocab: the same tokens" || bad "--draft-vocab changed the output"
expect_error "--draft-vocab past the vocabulary" "draft vocabulary must be in \[1, 300\]" "$deepmoe" generate \
  --model mtp --tokens 1,2 --speculative mtp:2 --draft-vocab 301
expect_error "--mtp-depth past --seq" "--mtp-depth 40 needs --seq above it" "$deepmoe" train --init mtp \
  --data periodic.u32 --seq 32 --batch 4 --steps 1 --mtp-depth 40 --out x_mtp_seq
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
