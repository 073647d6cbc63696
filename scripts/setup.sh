#!/usr/bin/env bash
# One-time setup on a fresh machine (idempotent, quick when already done): software Vulkan for
# WebGPU without a GPU, Debian's Chromium for the browser test, and the npm dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-vulkan-cpu.sh
if [ -x scripts/install-chromium.sh ]; then bash scripts/install-chromium.sh; fi
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
