#!/usr/bin/env bash
# Installs llama.cpp as node-llama-cpp 3.22.1 with its prebuilt Linux x64 CPU binaries into
# bench/peer_llamacpp/node_modules, exactly as package-lock.json pins them, then builds the two
# small C helpers (build.sh). Idempotent: skips npm when the pinned versions are in place.
#
# --omit=optional skips the other platforms' and the CUDA/Vulkan binary packages (~600 MB) that
# node-llama-cpp lists as optional; the CPU package is a direct dependency here, so it stays.
# --ignore-scripts skips node-llama-cpp's postinstall, which would clone and compile llama.cpp
# from source when it thinks the prebuilt binaries do not fit. --prefer-offline uses the npm
# cache when it has the tarballs (their integrity is checked against the lock either way).
# Not `npm ci`: node-llama-cpp lists mac/win/riscv packages of 3.22.1 that the registry here does
# not serve, so the lock cannot record them and `npm ci` refuses the lock as out of sync;
# `npm install` follows the lock for everything it does record and leaves it unchanged.
set -euo pipefail
cd "$(dirname "$0")"

installed() {
  node -e '
    const need = {"node-llama-cpp": "3.22.1", "@node-llama-cpp/linux-x64": "3.22.1"};
    for (const [name, version] of Object.entries(need)) {
      const p = require(`./node_modules/${name}/package.json`);
      if (p.version !== version) process.exit(1);
    }' 2>/dev/null &&
    [ -f node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/libllama.v0.5.0.so ]
}

command -v node >/dev/null || { echo "install.sh: node (>= 20) is required" >&2; exit 1; }
if installed; then
  echo "node-llama-cpp 3.22.1 with linux-x64 binaries already installed"
else
  npm install --omit=optional --ignore-scripts --prefer-offline --no-audit --no-fund
  installed || { echo "install.sh: node-llama-cpp 3.22.1 or its linux-x64 binaries missing after npm install" >&2; exit 1; }
fi
./build.sh
