#!/usr/bin/env bash
# Builds and runs the GEMM-choice study, then writes bench/gemm_choice/results.md.
#   bench/gemm_choice/run.sh            (from anywhere; ~7-8 min on the 2-core box)
#   bench/gemm_choice/run.sh --spot     (~1.5 min) re-measure only roofline + a subset (M in 1,4,128,512;
#                                       2048x2048 and 1408x2048; best variants) into results_spot/ and
#                                       regenerate results.md with both; use it when the full run was
#                                       disturbed by other load on the 2 cores.
# Env: BUILD_DIR (default <repo>/build-gemm), MIN_TIME (default 0.1), REPS (default 3).
# Each backend family runs in its own process so OpenBLAS's pthread pool and
# oneDNN's libgomp pool never spin against each other on the 2 cores.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BUILD=${BUILD_DIR:-$ROOT/build-gemm}
MIN_TIME=${MIN_TIME:-0.1}
REPS=${REPS:-3}
SPOT=0
[[ ${1:-} == --spot ]] && SPOT=1
OUT=$BUILD/results
[[ $SPOT == 1 ]] && OUT=$BUILD/results_spot

cmake -S "$HERE" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C "$BUILD"
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.txt "$OUT"/*.log

env | grep -E '^(OPENBLAS|GOTO|OMP|GOMP|KMP|DNNL|ONEDNN)_' | sort >"$OUT/env.txt" || true

sample_load() { echo "$1: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/loadavg.txt"; }
busy_s() { awk -v hz="$(getconf CLK_TCK)" '/^cpu /{printf "%.2f", ($2+$3+$4+$7+$8+$9)/hz}' /proc/stat; }
now_s() { date +%s.%N; }
# Runs a command and appends "tag: wall, own CPU, CPU used by everything else" to
# contention.txt (others' CPU-seconds over the run: ~0 on a quiet box).
measured() {  # tag cmd...
  local tag=$1
  shift
  local b0 t0 b1 t1
  b0=$(busy_s)
  t0=$(now_s)
  /usr/bin/time -f "%U %S" -o "$OUT/.time" "$@"
  t1=$(now_s)
  b1=$(busy_s)
  read -r u sy <"$OUT/.time"
  awk -v tag="$tag" -v w="$(echo "$t1 - $t0" | bc)" -v all="$(echo "$b1 - $b0" | bc)" -v own="$(echo "$u + $sy" | bc)" \
    'BEGIN{o=all-own; if(o<0)o=0; printf "%s: wall %.1f s, own CPU %.1f s, other processes %.1f CPU-s (%.0f%% of one core)\n", tag, w, own, o, 100*o/w}' \
    >>"$OUT/contention.txt"
  rm -f "$OUT/.time"
}

BENCH=("$BUILD/gemm_libs_bench" "--benchmark_min_time=$MIN_TIME" "--benchmark_repetitions=$REPS"
       "--benchmark_report_aggregates_only=true" "--benchmark_out_format=json")

run_bench() {  # tag filter [env...]
  local tag=$1 filter=$2
  shift 2
  echo "== $tag ($filter) $*"
  sample_load "$tag start"
  measured "$tag" env "$@" "${BENCH[@]}" --benchmark_filter="$filter" --benchmark_out="$OUT/$tag.json" \
    >"$OUT/$tag.log" 2>"$OUT/$tag.verify.txt"
  sample_load "$tag end"
  grep -h '^openblas core' "$OUT/$tag.verify.txt" || true
}

echo "== roofline"
sample_load "roofline start"
measured roofline "$BUILD/roofline" >"$OUT/roofline.json"
cat "$OUT/roofline.json"

if [[ $SPOT == 1 ]]; then
  SUB='/M:(1|4|128|512)/N:(2048/K:2048|1408/K:2048)/'
  run_bench openblas_skylakex "^openblas_f32(_gemv)?$SUB" OPENBLAS_CORETYPE=SkylakeX
  run_bench openblas_haswell "^openblas_f32_gemv$SUB" OPENBLAS_CORETYPE=Haswell
  run_bench dnnl "^dnnl_(f32|bf16)_(packed|rtM)$SUB" -u OMP_NUM_THREADS
  run_bench ref "^ref_bf16$SUB" -u OMP_NUM_THREADS
  python3 "$HERE/make_report.py" "$BUILD/results" "$OUT" >"$HERE/results.md"
  echo "wrote $HERE/results.md (full run + spot check)"
  exit 0
fi

# OpenBLAS three times (the variable must be set before the library loads):
#  - auto:     OPENBLAS_CORETYPE unset -> OpenBLAS's own detection (Cooperlake on this Zen 5)
#  - haswell:  OPENBLAS_CORETYPE=Haswell (AVX2 kernels; what this box's environment exports)
#  - skylakex: OPENBLAS_CORETYPE=SkylakeX (AVX-512 kernels)
run_bench openblas_auto '^openblas' -u OPENBLAS_CORETYPE
run_bench openblas_haswell '^openblas' OPENBLAS_CORETYPE=Haswell
run_bench openblas_skylakex '^openblas' OPENBLAS_CORETYPE=SkylakeX
# oneDNN (libgomp): thread count set per benchmark via omp_set_num_threads().
run_bench dnnl '^dnnl' -u OMP_NUM_THREADS
run_bench ref '^ref' -u OMP_NUM_THREADS

python3 "$HERE/make_report.py" "$OUT" >"$HERE/results.md"
echo "wrote $HERE/results.md"
