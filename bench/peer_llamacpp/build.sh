#!/usr/bin/env bash
# Builds the C helpers against the libllama/libggml that node-llama-cpp ships (no llama.cpp
# headers needed: each file declares the few functions it uses):
#   build/llama_quantize        llama.cpp's own quantizer (llama_quantize.c)
#   build/threadpool_shim.so    LD_PRELOAD: a persistent ggml thread pool (threadpool_shim.c)
#   build/read_bandwidth        memory read bandwidth at the moment (read_bandwidth.c)
set -euo pipefail
cd "$(dirname "$0")"
bins=$PWD/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64
[ -f "$bins/libllama.v0.5.0.so" ] || { echo "build.sh: $bins/libllama.v0.5.0.so missing; run install.sh" >&2; exit 1; }
mkdir -p build
cc -O2 -Wall -Wextra -std=c11 llama_quantize.c -o build/llama_quantize \
  -L"$bins" -l:libllama.v0.5.0.so -Wl,-rpath,"$bins"
# The shim links nothing from llama.cpp: it finds every function at run time in the process it
# is preloaded into (node's addon has loaded libllama and libggml by then).
cc -O2 -Wall -Wextra -std=c11 -shared -fPIC threadpool_shim.c -o build/threadpool_shim.so -ldl -lpthread
# Built for this machine (AVX-512 loads where it has them), the machine the race runs on.
cc -O3 -march=native -Wall -Wextra -std=c11 read_bandwidth.c -o build/read_bandwidth -lpthread
echo "built build/llama_quantize, build/threadpool_shim.so and build/read_bandwidth"
