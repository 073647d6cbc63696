#!/usr/bin/env bash
# Everything the speed issue measures on a GPU machine, in one call (device time is short):
#   1. the kernel tests (GPU results against float64 references; they need no fixtures) on that
#      adapter, whose kernel choices (GEMV with split K, tiled GEMM, layer norm in the GEMV
#      prologue) differ from the CPU adapter's;
#   2. bench runs for the targets (gpt2 decode at batch 1..64, the 1024-token prefill, layer-norm
#      fusion on/off, the decode GEMV's K split inside workgroups (default) or across them with a
#      reduce dispatch (--gemv-reduce split), batch 16 / 64 decode in the GEMV rather than the
#      tiled GEMM (--gemv-max-m 64), the prefill GEMM's 64 x 64 tile beside 128 x 128 and
#      64 x 128 (--gemm-tile), gpt2 and gpt2-xl with --f16), each as JSON under $OUT;
#   3. a short table of the figures last.
# On the development machine: npm ci && npm run build && bash ../shared/gpu/stage.sh
# then with the device tool: run carry [".gpu"], command "bash .gpu/remote.sh bash scripts/device-check.sh".
# MODEL / XL_MODEL / REPEAT override the models and repeats (to try the script on a small model).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-device-out}"
mkdir -p "$out"
model="${MODEL:-random:gpt2}"
xl="${XL_MODEL:-random:gpt2-xl}"
rep="${REPEAT:-5}"
bench() { # name, time limit (s), bench flags...
  local name=$1 lim=$2
  shift 2
  echo "== $name ($(date -u +%T))"
  timeout "$lim" node bin/gpt2-webgpu.js bench "$@" --json > "$out/$name.json" 2> "$out/$name.log"
  echo "exit $?" >> "$out/$name.log"
}
node bin/gpt2-webgpu.js info --json > "$out/info.json" 2> "$out/info.log"
echo "== kernel tests ($(date -u +%T))"
timeout 300 node scripts/run-tests.js device attention beam-kernel elementwise embedding f16 kvcache layernorm matmul softmax sampling > "$out/tests.log" 2>&1
echo "exit $?" >> "$out/tests.log"
tail -n 3 "$out/tests.log"
bench gpt2-f32 150 --model "$model" --batch 1,4,16,64 --prompt-tokens 128 --new-tokens 64 --repeat "$rep"
bench gpt2-f32-ln-off 90 --model "$model" --batch 1 --prompt-tokens 128 --new-tokens 64 --repeat "$rep" --fuse-ln off --no-profile
bench gpt2-f32-gemv64 90 --model "$model" --batch 16,64 --prompt-tokens 128 --new-tokens 64 --repeat "$rep" --gemv-max-m 64 --no-profile
bench gpt2-f32-split 90 --model "$model" --batch 1,4 --prompt-tokens 128 --new-tokens 64 --repeat "$rep" --gemv-reduce split --no-profile
bench gpt2-prefill-1024 90 --model "$model" --prompt-tokens 1024 --new-tokens 1 --repeat "$rep"
bench gpt2-prefill-1024-t128 60 --model "$model" --prompt-tokens 1024 --new-tokens 1 --repeat "$rep" --gemm-tile 16,16,8,8,8 --no-profile
bench gpt2-prefill-1024-t64x128 60 --model "$model" --prompt-tokens 1024 --new-tokens 1 --repeat "$rep" --gemm-tile 16,16,4,8,16 --no-profile
bench gpt2-f16 120 --model "$model" --f16 --batch 1,64 --prompt-tokens 128 --new-tokens 64 --repeat "$rep"
bench gpt2-xl-f16 300 --model "$xl" --f16 --batch 1 --prompt-tokens 128 --new-tokens 32 --repeat 3
bench gpt2-xl-f16-split 200 --model "$xl" --f16 --batch 1 --prompt-tokens 128 --new-tokens 32 --repeat 3 --gemv-reduce split --no-profile
node scripts/device-summary.js "$out"
