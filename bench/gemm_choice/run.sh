#!/usr/bin/env bash
# Builds and runs the GEMM-choice study, then writes bench/gemm_choice/results.md.
#   bench/gemm_choice/run.sh            (from anywhere; ~7-8 min on the 2-core box)
# Env: BUILD_DIR (default <repo>/build-gemm), MIN_TIME (default 0.1), REPS (default 3).
# Each backend family runs in its own process so OpenBLAS's pthread pool and
# oneDNN's libgomp pool never spin against each other on the 2 cores.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BUILD=${BUILD_DIR:-$ROOT/build-gemm}
MIN_TIME=${MIN_TIME:-0.1}
REPS=${REPS:-3}
OUT=$BUILD/results

cmake -S "$HERE" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C "$BUILD"
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.txt "$OUT"/*.log

env | grep -E '^(OPENBLAS|GOTO|OMP|GOMP|KMP|DNNL|ONEDNN)_' | sort >"$OUT/env.txt" || true

sample_load() { echo "$1: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/loadavg.txt"; }

BENCH=("$BUILD/gemm_libs_bench" "--benchmark_min_time=$MIN_TIME" "--benchmark_repetitions=$REPS"
       "--benchmark_report_aggregates_only=true" "--benchmark_out_format=json")

run_bench() {  # tag filter [env...]
  local tag=$1 filter=$2
  shift 2
  echo "== $tag ($filter) $*"
  sample_load "$tag start"
  env "$@" "${BENCH[@]}" --benchmark_filter="$filter" --benchmark_out="$OUT/$tag.json" \
    >"$OUT/$tag.log" 2>"$OUT/$tag.verify.txt"
  sample_load "$tag end"
  grep -h '^openblas core' "$OUT/$tag.verify.txt" || true
}

echo "== roofline"
sample_load "roofline start"
"$BUILD/roofline" | tee "$OUT/roofline.json"

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
