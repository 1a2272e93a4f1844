#!/usr/bin/env bash
# Data-parallel training on one machine, on bench/train_bench.sh's model (the quickstart's shape),
# f32, --seq 128 --batch 8, windows in order:
#   (a) one process x 2 threads against mpirun -np 2 x 1 thread each: tokens/s, the median over
#       the steps after the first (the first allocates and faults its buffers in);
#   (b) the share of rank 0's step time spent blocked on communication (metrics.jsonl comm_wait_s /
#       step time), --comm-overlap on against off;
#   (c) bytes sent per step by rank 0, by collective (metrics.jsonl comm_bytes), for
#       --grad-compression none, bf16 and int8;
#   (d) --expert-parallel 2 (each rank holds 8 of the 16 routed experts, tokens travel by all-to-all):
#       tokens/s, bytes per step by collective, and each rank's weights + gradients + optimizer state
#       against the data-parallel run's;
#   (e) --precision bf16 (the f32 master weights sharded, the bf16 copy all-gathered): one process against
#       2 ranks, tokens/s and bytes per step.
#   [STEPS=12] [BIND=core] bench/distributed_bench.sh [build-dir] [work-dir]
# The ranks are bound with --bind-to $BIND (core, mpirun's own default for 2 ranks: each rank's one
# thread stays on its core, as the one process's 2 threads spread over 2 cores; BIND=none lets the
# kernel move them). Run it on a quiet machine: the ranks wait on each other, so a busy core slows both.
set -euo pipefail
build=${1:-build}
work=${2:-build/distributed_bench}
steps=${STEPS:-12}
bind=${BIND:-core}
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$work"
# Open MPI refuses to run as root without these; shared memory between the ranks, no network probing.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl=self,vader,tcp OMPI_MCA_pml=ob1
# shellcheck disable=SC2016  # the sed pattern matches train_bench.sh's literal $work
sed -n '/^cat >"\$work\/config.json"/,/^JSON/p' "$repo/bench/train_bench.sh" | sed "s#\$work#$work#" | bash
"$build/deepmoe" init --config "$work/config.json" --out "$work/model" --seed 1 >/dev/null
/usr/bin/python3 -c "import numpy as n; n.random.default_rng(0).integers(0, 4096, 200000, dtype=n.uint32).tofile('$work/tokens.u32')"
common=(--init "$work/model" --data "$work/tokens.u32" --seq 128 --batch 8 --steps "$steps" --order sequential
        --lr 1e-3 --precision f32)
mpi=(mpirun -np 2 --bind-to "$bind")

run() {  # NAME then the launcher and flags
  local name=$1
  shift
  rm -rf "${work:?}/$name"
  "$@" --out "$work/$name" >"$work/$name.txt" 2>&1 || { tail -c 600 "$work/$name.txt"; exit 1; }
}
run solo "$build/deepmoe" train "${common[@]}" --threads 2
run overlap-on "${mpi[@]}" "$build/deepmoe" train "${common[@]}" --threads 1 --comm-overlap on
run overlap-off "${mpi[@]}" "$build/deepmoe" train "${common[@]}" --threads 1 --comm-overlap off
run bf16-solo "$build/deepmoe" train "${common[@]/f32/bf16}" --threads 2
run bf16 "${mpi[@]}" "$build/deepmoe" train "${common[@]/f32/bf16}" --threads 1
run expert-parallel "${mpi[@]}" "$build/deepmoe" train "${common[@]}" --threads 1 --expert-parallel 2
for kind in bf16 int8; do
  run "compress-$kind" "${mpi[@]}" "$build/deepmoe" train "${common[@]}" --threads 1 --grad-compression $kind
done

/usr/bin/python3 - "$work" "$bind" <<'PY'
import json, statistics, sys
work, bind = sys.argv[1:]
def lines(name):
    return [json.loads(l) for l in open(f"{work}/{name}/metrics.jsonl")][1:]
def tok_s(name):
    return statistics.median(r["tokens_per_second"] for r in lines(name))
def wait_share(name):
    # tokens_per_second is the step's batch x seq over its wall time: the step time back from it.
    return statistics.median(r["comm_wait_s"] * r["tokens_per_second"] / (8 * 128) for r in lines(name))
def wait_s(name):
    return statistics.median(r["comm_wait_s"] for r in lines(name))
solo, dp = tok_s("solo"), tok_s("overlap-on")
print(f"(a) tokens/s, median of steps 2..: 1 process x 2 threads {solo:.0f}; mpirun -np 2 --bind-to {bind} x 1 "
      f"thread {dp:.0f} ({dp / solo:.2f}x)")
print("(b) rank 0 blocked on communication, median step:")
print(f"    {'--comm-overlap':<16}{'tok/s':>8}{'wait s':>10}{'of step':>9}")
for mode in ("on", "off"):
    n = f"overlap-{mode}"
    print(f"    {mode:<16}{tok_s(n):>8.0f}{wait_s(n):>10.4f}{wait_share(n):>9.1%}")
print("(c) bytes sent by rank 0 per step:")
print(f"    {'--grad-compression':<20}{'reduce-scatter':>16}{'all-gather':>14}{'grads vs none':>15}")
base = lines("overlap-on")[-1]["comm_bytes"]["reduce_scatter"]
for kind, name in (("none", "overlap-on"), ("bf16", "compress-bf16"), ("int8", "compress-int8")):
    b = lines(name)[-1]["comm_bytes"]
    print(f"    {kind:<20}{b['reduce_scatter']:>16,}{b['all_gather']:>14,}{base / b['reduce_scatter']:>14.2f}x")
def held_mib(name):  # the world layout's line for rank 0: "..., 112.9 MiB of weights, gradients and optimizer state"
    import re
    text = open(f"{work}/{name}.txt").read()
    return float(re.search(r"^  rank 0 \(.*?\): .*?([0-9.]+) MiB of weights", text, re.M).group(1))
ep, dp = lines("expert-parallel")[-1]["comm_bytes"], lines("overlap-on")[-1]["comm_bytes"]
print("(d) --expert-parallel 2 against data parallel only, 2 ranks:")
print(f"    {'':<18}{'tok/s':>8}{'reduce-scatter':>16}{'all-gather':>14}{'all-to-all':>14}{'rank 0 MiB':>12}")
for label, name, b in (("data parallel", "overlap-on", dp), ("expert parallel 2", "expert-parallel", ep)):
    print(f"    {label:<18}{tok_s(name):>8.0f}{b['reduce_scatter']:>16,}{b['all_gather']:>14,}"
          f"{b.get('all_to_all', 0):>14,}{held_mib(name):>12.1f}")
b = lines("bf16")[-1]["comm_bytes"]
print(f"(e) --precision bf16: 1 process x 2 threads {tok_s('bf16-solo'):.0f} tok/s; 2 ranks {tok_s('bf16'):.0f} tok/s "
      f"({tok_s('bf16') / tok_s('bf16-solo'):.2f}x), reduce-scatter {b['reduce_scatter']:,} B, all-gather "
      f"{b['all_gather']:,} B, rank 0 {held_mib('bf16'):.1f} MiB")
PY
