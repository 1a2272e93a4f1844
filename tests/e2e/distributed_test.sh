#!/usr/bin/env bash
# Data-parallel training (ZeRO-1 over Open MPI) against one process with the same global batch, on
# the quickstart's model shape (hidden 256, 6 layers, 16 routed experts top-2 + 1 shared, vocab 4096),
# f32, one thread per rank, 30 steps of 12 windows of 32 tokens (--batch 4 --grad-accum 3: 2 ranks train
# 2 micro-batches of 3 windows each, 4 ranks 1 of 3, across the one-process batches of 4), with
# clipping that bites, the balance loss, aux-loss-free bias updates and validation:
#   - mpirun -np 2 (shared memory), -np 4 --oversubscribe, and -np 2 --mca btl tcp,self (the TCP path
#     between machines): every step's loss, cross-entropy, gradient norm and validation loss within
#     1e-5 relative of one process's, and the final weights within 1e-4 (||a - b|| / ||b||, over all
#     parameters and per tensor; tests/e2e/compare_runs.py);
#   - at 2 ranks, a run stopped after step 20 and resumed from its checkpoint ends bit for bit where
#     the uninterrupted run ends; one process resumes the same checkpoint (any world size can) and
#     ends within the limits above of the one-process run;
#   - --grad-compression bf16 and int8 at 2 ranks, 20 steps: every step's loss within 2% relative of the
#     uncompressed run's, and the gradients' bytes per step 2x (bf16) and 3.5-4x (int8) fewer;
#     a compressed run resumed from its checkpoint (which holds each rank's residual) is bit-identical;
#   - --comm-overlap off (the reductions after the whole backward): bit-identical to on for 10 steps;
#   - a rank killed (kill -9) after the first checkpoint: the job ends within 60 s, non-zero, with one
#     line from rank 0, and --resume ends bit for bit where the uninterrupted run ends;
#   - expert parallel (--expert-parallel 2: each rank of a pair holds 8 of the 16 experts, tokens go to
#     their experts' ranks and back): -np 2, -np 4 --oversubscribe (two pairs, the experts' gradients
#     reduced over the pair members holding the same experts) and -np 2 over TCP within the same limits of
#     one process; the world layout names each rank's experts; a 2-rank expert-parallel run resumed from
#     step 20 is bit-identical, and its checkpoint resumed by 4 ranks with --expert-parallel 4 and by one
#     process ends within the limits of one process's run;
#   - --precision bf16 at 2 ranks (ZeRO-1 of the f32 master weights too: each rank keeps its shard of
#     them, the ranks all-gather the bf16 copy): 20 steps with every step's loss within 2% of one bf16
#     process's (bf16 rounding of the activations depends on the micro-batch split and Adam's first steps
#     are sign-like, so bf16 runs of another split drift apart: docs/distributed.md), rank 0 holding less
#     than the f32 run's rank 0 plus the bf16 copy (what it held before the master weights were sharded),
#     and a run resumed from step 10 bit-identical;
#   - a batch that does not split over the ranks, and an --expert-parallel that does not divide the ranks
#     or the experts, are refused with one line.
# Prints "N passed, M failed".
set -u
deepmoe=$1
work=$2
here=$(cd "$(dirname "$0")" && pwd)
rm -rf "$work" && mkdir -p "$work" && cd "$work" || exit 1
# Open MPI refuses to run as root without these (containers and CI run as root).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Shared memory (vader) between the ranks of one machine, TCP otherwise; no InfiniBand or UCX probing.
export OMPI_MCA_btl=self,vader,tcp OMPI_MCA_pml=ob1
# mpirun gives one rank per core: a one-core machine would refuse -np 2.
[ "$(nproc)" -ge 2 ] || export OMPI_MCA_rmaps_base_oversubscribe=1
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "PASS $1"; }
bad() { failed=$((failed + 1)); echo "FAIL $1"; }

cat >config.json <<'JSON'
{"model_type": "deepseek_v3", "vocab_size": 4096, "hidden_size": 256, "intermediate_size": 768,
 "moe_intermediate_size": 128, "num_hidden_layers": 6, "num_attention_heads": 4, "q_lora_rank": 128,
 "kv_lora_rank": 64, "qk_nope_head_dim": 32, "qk_rope_head_dim": 16, "v_head_dim": 32,
 "n_routed_experts": 16, "n_shared_experts": 1, "num_experts_per_tok": 2, "first_k_dense_replace": 1,
 "n_group": 4, "topk_group": 2, "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": true,
 "routed_scaling_factor": 2.5, "tie_word_embeddings": false}
JSON
/usr/bin/python3 -c "
import numpy as n
n.random.default_rng(0).integers(0, 4096, 40000, dtype=n.uint32).tofile('tokens.u32')
n.random.default_rng(1).integers(0, 4096, 2000, dtype=n.uint32).tofile('val.u32')"
"$deepmoe" init --config config.json --out model --seed 1 >/dev/null || { bad "init"; exit 1; }
common=(--init model --data tokens.u32 --val-data val.u32 --eval-every 10 --seq 32 --batch 4 --grad-accum 3 --lr 1e-3
        --clip 0.5 --aux-loss 1e-3 --bias-update 1e-3 --threads 1)
compare() { /usr/bin/python3 "$here/compare_runs.py" "$@"; }

"$deepmoe" train "${common[@]}" --steps 30 --out solo >solo.txt 2>&1 || bad "one process ($(tail -c 300 solo.txt))"

for run in "np2:-np 2" "np4:-np 4 --oversubscribe" "tcp:-np 2 --mca btl tcp,self"; do
  name=${run%%:*} args=${run#*:}
  # shellcheck disable=SC2086
  if mpirun $args "$deepmoe" train "${common[@]}" --steps 30 --out "$name" >"$name.txt" 2>&1 &&
    compare "$name" solo >"$name.compare.txt" 2>&1; then
    ok "mpirun $args matches one process: $(cat "$name.compare.txt")"
  else
    bad "mpirun $args ($(tail -c 400 "$name.txt"); $(cat "$name.compare.txt" 2>/dev/null))"
  fi
done
grep -q "^world: 2 ranks x 1 thread" np2.txt && [ "$(grep -c "^world:" np2.txt)" -eq 1 ] &&
  [ "$(grep -c "^step " np2.txt)" -eq 30 ] && ok "the world layout printed once, steps by rank 0 alone" ||
  bad "world layout ($(head -c 300 np2.txt))"

# Expert parallel: the same run with the routed experts split over pairs of ranks.
for run in "ep2:-np 2" "ep4:-np 4 --oversubscribe" "ep2tcp:-np 2 --mca btl tcp,self"; do
  name=${run%%:*} args=${run#*:}
  # shellcheck disable=SC2086
  if mpirun $args "$deepmoe" train "${common[@]}" --steps 30 --expert-parallel 2 --out "$name" >"$name.txt" 2>&1 &&
    compare "$name" solo >"$name.compare.txt" 2>&1; then
    ok "mpirun $args --expert-parallel 2 matches one process: $(cat "$name.compare.txt")"
  else
    bad "mpirun $args --expert-parallel 2 ($(tail -c 400 "$name.txt"); $(cat "$name.compare.txt" 2>/dev/null))"
  fi
done
grep -q "^  rank 0 (.*): experts 0-7, " ep4.txt && grep -q "^  rank 3 (.*): experts 8-15, " ep4.txt &&
  ok "the world layout names each rank's experts: $(grep "^  rank 3" ep4.txt)" || bad "expert layout ($(head -c 600 ep4.txt))"

# Stopped after step 20 (its checkpoint), resumed to 30: the uninterrupted run's bytes.
mpirun -np 2 "$deepmoe" train "${common[@]}" --steps 20 --save-every 10 --out part >part.txt 2>&1 &&
  cp -r part cross &&
  mpirun -np 2 "$deepmoe" train "${common[@]}" --steps 30 --save-every 10 --resume --out part >resume.txt 2>&1 &&
  grep -q "resuming from .*step-20" resume.txt &&
  cmp -s part/model.safetensors np2/model.safetensors &&
  /usr/bin/python3 - part/metrics.jsonl np2/metrics.jsonl <<'PY' && ok "a resumed 2-rank run is bit-identical to the uninterrupted one" ||
import json, sys
runs = [[json.loads(l) for l in open(p)] for p in sys.argv[1:]]
keys = ("step", "loss", "cross_entropy", "grad_norm", "lr", "expert_load", "val_loss")
sys.exit(0 if [[r.get(k) for k in keys] for r in runs[0]] == [[r.get(k) for k in keys] for r in runs[1]] else 1)
PY
  bad "resume at 2 ranks ($(tail -c 300 resume.txt))"

# The 2-rank checkpoint resumed by one process.
"$deepmoe" train "${common[@]}" --steps 30 --resume --out cross >cross.txt 2>&1 && compare cross solo >cross.compare.txt &&
  ok "one process resumes a 2-rank checkpoint: $(cat cross.compare.txt)" ||
  bad "cross-size resume ($(tail -c 300 cross.txt); $(cat cross.compare.txt 2>/dev/null))"

# The same at 2 expert-parallel ranks; then its checkpoint resumed by 4 ranks with 4 experts' blocks,
# and by one process.
same_run() {  # metrics A B: every step's numbers bit for bit
  /usr/bin/python3 - "$1" "$2" <<'PY'
import json, sys
runs = [[json.loads(l) for l in open(p)] for p in sys.argv[1:]]
keys = ("step", "loss", "cross_entropy", "grad_norm", "lr", "expert_load", "val_loss")
sys.exit(0 if [[r.get(k) for k in keys] for r in runs[0]] == [[r.get(k) for k in keys] for r in runs[1]] else 1)
PY
}
mpirun -np 2 "$deepmoe" train "${common[@]}" --steps 20 --save-every 10 --expert-parallel 2 --out ep-part \
  >ep-part.txt 2>&1 && cp -r ep-part ep-cross4 && cp -r ep-part ep-cross1 &&
  mpirun -np 2 "$deepmoe" train "${common[@]}" --steps 30 --save-every 10 --expert-parallel 2 --resume \
    --out ep-part >ep-resume.txt 2>&1 &&
  grep -q "resuming from .*step-20" ep-resume.txt && cmp -s ep-part/model-00001-of-00002.safetensors \
  ep2/model-00001-of-00002.safetensors && cmp -s ep-part/model-00002-of-00002.safetensors \
  ep2/model-00002-of-00002.safetensors &&
  same_run ep-part/metrics.jsonl ep2/metrics.jsonl && ok "a resumed 2-rank expert-parallel run is bit-identical" ||
  bad "expert-parallel resume ($(tail -c 300 ep-resume.txt))"
mpirun -np 4 --oversubscribe "$deepmoe" train "${common[@]}" --steps 30 --expert-parallel 4 --resume --out ep-cross4 \
  >ep-cross4.txt 2>&1 && compare ep-cross4 solo >ep-cross4.compare.txt &&
  ok "4 ranks with --expert-parallel 4 resume a 2-rank --expert-parallel 2 checkpoint: $(cat ep-cross4.compare.txt)" ||
  bad "expert-parallel cross resume ($(tail -c 300 ep-cross4.txt); $(cat ep-cross4.compare.txt 2>/dev/null))"
"$deepmoe" train "${common[@]}" --steps 30 --resume --out ep-cross1 >ep-cross1.txt 2>&1 &&
  compare ep-cross1 solo >ep-cross1.compare.txt &&
  ok "one process resumes a 2-rank expert-parallel checkpoint: $(cat ep-cross1.compare.txt)" ||
  bad "expert-parallel checkpoint in one process ($(tail -c 300 ep-cross1.txt))"

# Compressed gradients against the uncompressed 2-rank run's first 20 steps (a constant lr: the same steps).
for kind in bf16 int8; do
  mpirun -np 2 "$deepmoe" train "${common[@]}" --steps 20 --grad-compression $kind --out $kind >$kind.txt 2>&1 &&
    /usr/bin/python3 - $kind np2 >$kind.compare.txt 2>&1 <<'PY' && ok "--grad-compression $kind: $(cat $kind.compare.txt)" ||
import json, sys
kind, base = sys.argv[1:]
runs = [[json.loads(l) for l in open(f"{p}/metrics.jsonl")][:20] for p in (kind, base)]
worst = max(abs(a["loss"] - b["loss"]) / b["loss"] for a, b in zip(*runs))
final = abs(runs[0][-1]["loss"] - runs[1][-1]["loss"]) / runs[1][-1]["loss"]
ratio = runs[1][-1]["comm_bytes"]["reduce_scatter"] / runs[0][-1]["comm_bytes"]["reduce_scatter"]
low, high = (1.95, 2.05) if kind == "bf16" else (3.5, 4.05)
print(f"loss within {worst:.2%} per step, final {final:.2%} (limit 2%); {ratio:.2f}x fewer gradient bytes a step")
sys.exit(0 if len(runs[0]) == 20 and worst <= 0.02 and low <= ratio <= high else 1)
PY
    bad "--grad-compression $kind ($(tail -c 300 $kind.txt); $(cat $kind.compare.txt 2>/dev/null))"
done

# Compressed runs keep each rank's error-feedback residual in the checkpoint: stopped at step 10 and
# resumed, the uninterrupted compressed run's bytes.
mpirun -np 2 "$deepmoe" train "${common[@]}" --steps 10 --save-every 10 --grad-compression int8 --out int8-part \
  >int8-part.txt 2>&1 &&
  mpirun -np 2 "$deepmoe" train "${common[@]}" --steps 20 --grad-compression int8 --resume --out int8-part \
    >int8-resume.txt 2>&1 &&
  grep -q "resuming from .*step-10" int8-resume.txt && cmp -s int8-part/model.safetensors int8/model.safetensors &&
  same_run int8-part/metrics.jsonl int8/metrics.jsonl &&
  ok "a resumed --grad-compression int8 run is bit-identical (the residuals are in the checkpoint)" ||
  bad "compressed resume ($(tail -c 300 int8-resume.txt))"

# --comm-overlap off reduces the same ranges in the same order, after the backward: the overlapped run's numbers.
mpirun -np 2 "$deepmoe" train "${common[@]}" --steps 10 --comm-overlap off --out serial >serial.txt 2>&1 &&
  /usr/bin/python3 - serial/metrics.jsonl np2/metrics.jsonl <<'PY' && ok "--comm-overlap off: bit-identical to on for 10 steps" ||
import json, sys
runs = [[json.loads(l) for l in open(p)][:10] for p in sys.argv[1:]]
keys = ("step", "loss", "cross_entropy", "grad_norm", "lr", "expert_load", "val_loss", "comm_bytes")
waits = all(r["comm_wait_s"] >= 0 for run in runs for r in run)
sys.exit(0 if len(runs[0]) == 10 and waits and [[r.get(k) for k in keys] for r in runs[0]] == [[r.get(k) for k in keys] for r in runs[1]] else 1)
PY
  bad "--comm-overlap off ($(tail -c 300 serial.txt))"

# kill -9 of rank 1 once the first checkpoint exists: the job ends, and --resume continues from the
# newest checkpoint to the uninterrupted run's bytes. mpirun -q keeps its banners to itself, and vader
# without its single-copy reads prints no "Read -1 ... errno = 3" from the dead rank's memory: rank 0's
# line is all the job prints besides its steps (README's recipe).
mpirun -q --mca btl_vader_single_copy_mechanism none -np 2 "$deepmoe" train "${common[@]}" --steps 30 --save-every 5 \
  --out killed >killed.txt 2>&1 &
job=$!
for _ in $(seq 600); do [ -d killed/checkpoints/step-5 ] || ! kill -0 $job 2>/dev/null && break; sleep 0.1; done
victim=""
for pid in $(pgrep -P $job); do
  tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx OMPI_COMM_WORLD_RANK=1 && victim=$pid
done
killed_at=$(date +%s)
[ -n "$victim" ] && kill -9 "$victim"
for _ in $(seq 600); do kill -0 $job 2>/dev/null || break; sleep 0.1; done
kill -0 $job 2>/dev/null && kill -9 $job  # still running after 60 s: fails below
wait $job
rc=$?
took=$(($(date +%s) - killed_at))
[ -n "$victim" ] && [ $rc -ne 0 ] && [ $took -le 60 ] &&
  grep -q "^deepmoe: error: rank 0 of 2: mpirun ended the job" killed.txt &&
  [ "$(grep -vc -e "^step " -e "^world: " -e "^  rank " killed.txt)" -eq 1 ] &&
  ok "a rank killed with -9 ends the job in ${took} s (exit $rc): $(grep "^deepmoe: error" killed.txt)" ||
  bad "killed rank (victim '$victim', exit $rc after ${took} s: $(tail -c 400 killed.txt))"
mpirun -np 2 "$deepmoe" train "${common[@]}" --steps 30 --save-every 5 --resume --out killed >killed.resume.txt 2>&1 &&
  grep -q "resuming from .*step-" killed.resume.txt &&
  cmp -s killed/model.safetensors np2/model.safetensors &&
  /usr/bin/python3 - killed/metrics.jsonl np2/metrics.jsonl <<'PY' && ok "resumed after the kill: bit-identical to the uninterrupted run ($(grep -o "step-[0-9]*" killed.resume.txt | head -1))" ||
import json, sys
runs = [[json.loads(l) for l in open(p)] for p in sys.argv[1:]]
keys = ("step", "loss", "cross_entropy", "grad_norm", "lr", "expert_load", "val_loss")
sys.exit(0 if [[r.get(k) for k in keys] for r in runs[0]] == [[r.get(k) for k in keys] for r in runs[1]] else 1)
PY
  bad "resume after the kill ($(tail -c 300 killed.resume.txt))"

# 3 x 2 windows do not split over 4 ranks: one line naming the flags (from rank 0; all ranks exit).
mpirun -np 4 --oversubscribe "$deepmoe" train --init model --data tokens.u32 --seq 32 --batch 3 --grad-accum 2 \
  --steps 1 --threads 1 --out uneven >uneven.txt 2>&1
rc=$?
[ $rc -ne 0 ] && [ "$(grep -c "^deepmoe: error: .*cannot be split evenly over 4 ranks" uneven.txt)" -eq 1 ] &&
  ok "an uneven batch is refused with one line" ||
  bad "uneven batch (exit $rc: $(head -c 300 uneven.txt))"

# bf16 weights with sharded f32 master weights (on a CPU without AVX512-BF16 both runs train in f32).
"$deepmoe" train "${common[@]}" --steps 20 --precision bf16 --out bf16-solo >bf16-solo.txt 2>&1 &&
  mpirun -np 2 "$deepmoe" train "${common[@]}" --steps 20 --precision bf16 --save-every 10 --out bf16-np2 \
    >bf16-np2.txt 2>&1 && /usr/bin/python3 - bf16-np2 bf16-solo np2.txt bf16-np2.txt >bf16-np2.compare.txt <<'PY' &&
import json, re, sys
a, b, f32_log, bf16_log = sys.argv[1:]
runs = [[json.loads(l) for l in open(f"{p}/metrics.jsonl")] for p in (a, b)]
worst = max(abs(x["loss"] - y["loss"]) / y["loss"] for x, y in zip(*runs))
mib = [float(re.search(r"^  rank 0 \(.*?\): .*?([0-9.]+) MiB", open(p).read(), re.M).group(1)) for p in (f32_log, bf16_log)]
params = float(re.search(r"of the ([0-9.]+) M parameters it holds", open(bf16_log).read()).group(1)) * 1e6
unsharded = mib[0] + 2 * params / 2**20  # every f32 value plus the bf16 copy
print(f"loss within {worst:.2%} of one bf16 process (limit 2%); rank 0 holds {mib[1]:.1f} MiB, "
      f"{unsharded:.1f} with every f32 master weight")
sys.exit(0 if len(runs[0]) == 20 and worst <= 0.02 and mib[1] < unsharded else 1)
PY
  ok "--precision bf16 at 2 ranks: $(cat bf16-np2.compare.txt)" ||
  bad "--precision bf16 at 2 ranks ($(tail -c 300 bf16-np2.txt); $(cat bf16-np2.compare.txt 2>/dev/null))"
rm -rf bf16-part && mkdir bf16-part && cp -r bf16-np2/checkpoints bf16-part/ && rm -rf bf16-part/checkpoints/step-20 &&
  head -10 bf16-np2/metrics.jsonl >bf16-part/metrics.jsonl &&
  mpirun -np 2 "$deepmoe" train "${common[@]}" --steps 20 --precision bf16 --resume --out bf16-part \
    >bf16-resume.txt 2>&1 && grep -q "resuming from .*step-10" bf16-resume.txt &&
  cmp -s bf16-part/model.safetensors bf16-np2/model.safetensors && same_run bf16-part/metrics.jsonl bf16-np2/metrics.jsonl &&
  ok "a resumed --precision bf16 2-rank run is bit-identical" || bad "bf16 resume ($(tail -c 300 bf16-resume.txt))"

# deepmoe grpo over 2 ranks: each samples its share of the prompts with the seeds one process uses
# (completion c of the run draws with seed + c), so the rollouts are the same tokens and the losses
# agree to the rounding of other batch shapes.
for i in $(seq 1 40); do echo "the quick brown fox jumps over the lazy dog $i times, then naps."; done >text.txt
printf '%s\n' '{"prompt": "the quick brown", "answer": "7"}' '{"prompt": "the lazy dog", "answer": "3"}' >prompts.jsonl
grpo=(grpo --prompts prompts.jsonl --group 4 --max-tokens 6 --seq 20 --batch 2 --steps 3 --lr 1e-2 --threads 1
      --reward-cmd "awk '{print NR % 2}'")
"$deepmoe" tokenizer-train --vocab-size 280 --out tok text.txt >/dev/null 2>&1 &&
  "$deepmoe" init --config "$here/tiny_config.json" --out grpo_model --seed 5 --tokenizer tok >/dev/null &&
  "$deepmoe" "${grpo[@]}" --init grpo_model --log-rollouts grpo_solo.jsonl --out grpo_solo >grpo_solo.txt 2>&1 &&
  mpirun -np 2 "$deepmoe" "${grpo[@]}" --init grpo_model --log-rollouts grpo_np2.jsonl --out grpo_np2 >grpo_np2.txt 2>&1 &&
  /usr/bin/python3 - >grpo.compare.txt 2>&1 <<'PY' && ok "grpo at 2 ranks: $(cat grpo.compare.txt)" ||
import json, sys
lines = lambda path: [json.loads(l) for l in open(path)]
solo, ranks = lines("grpo_solo.jsonl"), [lines(f"grpo_np2.jsonl.rank{r}") for r in (0, 1)]
# Each step: prompt 0's group on rank 0, prompt 1's on rank 1.
merged = [x for step in range(3) for r in (0, 1) for x in ranks[r][4 * step:4 * step + 4]]
same = [x["tokens"] for x in solo] == [x["tokens"] for x in merged]
a, b = lines("grpo_solo/metrics.jsonl"), lines("grpo_np2/metrics.jsonl")
worst = max(abs(x["loss"] - y["loss"]) / abs(x["loss"]) for x, y in zip(a, b))
print(f"the same {len(solo)} completions: {same}, losses within {worst:.1e} of one process")
sys.exit(0 if same and len(b) == 3 and worst < 1e-4 else 1)
PY
  bad "grpo at 2 ranks ($(tail -c 300 grpo_np2.txt); $(cat grpo.compare.txt 2>/dev/null))"

# --expert-parallel must divide the ranks (3 does not divide 2) and the experts (3 does not divide 16).
for run in "2:3:divide the 2 ranks" "3:3:divide the model's 16 routed experts"; do
  IFS=: read -r ranks ep why <<<"$run"
  mpirun -np "$ranks" --oversubscribe "$deepmoe" train "${common[@]}" --steps 1 --expert-parallel "$ep" \
    --out "bad-ep$ranks" >"bad-ep$ranks.txt" 2>&1
  rc=$?
  [ $rc -ne 0 ] && [ "$(grep -c "^deepmoe: error: .*--expert-parallel $ep must $why" "bad-ep$ranks.txt")" -eq 1 ] &&
    ok "--expert-parallel $ep on $ranks ranks is refused with one line" ||
    bad "--expert-parallel $ep on $ranks ranks (exit $rc: $(head -c 300 "bad-ep$ranks.txt"))"
done

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
