#!/usr/bin/env bash
# Everything the speed issue measures on a GPU machine, in one call (device time is short):
#   1. the kernel tests and the model on random configs, prompts and decode steps (GPU results
#      against float64 references; they need no fixtures) on that adapter, whose kernel choices
#      (GEMV with split K, tiled GEMM, layer norm in the GEMV prologue, wide decode attention)
#      differ from the CPU adapter's;
#   2. bench runs for the targets (gpt2 decode at batch 1..64, the 1024-token prefill, layer-norm
#      fusion on/off, the decode GEMV's K split inside workgroups (default) or across them with a
#      reduce dispatch (matmul.splitK 'split'), batch 16 / 64 decode in the GEMV rather than the
#      tiled GEMM (matmul.gemvMaxM 64), the prefill GEMM's 64 x 64 tile beside 128 x 128 and
#      64 x 128 (matmul.gemmTile), decode attention in 256-thread workgroups (default) or 32-thread
#      ones (attention.decode 'query') at a 128-token and a 896-token context, gpt2 and gpt2-xl with
#      --f16 (and q8 / q4, the f16 KV cache at 896 tokens), one step in flight instead of 3 (--pipeline-depth 1), 16 conversations as separate
#      sessions against one session group (--sessions)), each as JSON under $OUT, and a closed-loop
#      chat load on separate sessions and on one group (bench/chat-load.mjs);
#   3. a short table of the figures last.
# On the development machine: npm ci && npm run build && bash ../shared/gpu/stage.sh
# then with the device tool: run carry [".gpu"], command "bash .gpu/remote.sh bash scripts/device-check.sh".
# MODEL / XL_MODEL / REPEAT override the models and repeats (to try the script on a small model),
# BUDGET the seconds the whole check may take.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-device-out}"
mkdir -p "$out"
model="${MODEL:-random:gpt2}"
xl="${XL_MODEL:-random:gpt2-xl}"
rep="${REPEAT:-5}"
# The device tool stops a command at 600 s and the session's device time is short: the whole check
# keeps to BUDGET seconds (default 540). Each step's own limit is cut to what is left, less a
# reserve for the summary, and a step with too little left is skipped (its log says so), so the
# table at the end always prints. The steps that measure a target run first.
budget="${BUDGET:-540}"
start=$SECONDS
left() { echo $((budget - (SECONDS - start) - 15)); }
step_limit() { # wanted limit (s) -> the limit to use, or 0 to skip
  local l
  l=$(left)
  if [ "$l" -lt 20 ]; then echo 0; elif [ "$l" -lt "$1" ]; then echo "$l"; else echo "$1"; fi
}
bench() { # name, time limit (s), bench flags...
  local name=$1 lim
  lim=$(step_limit "$2")
  shift 2
  if [ "$lim" -eq 0 ]; then
    echo "== $name: skipped, the check's budget of ${budget} s is spent"
    echo "skipped: the check's budget of ${budget} s was spent before this step" > "$out/$name.log"
    return
  fi
  echo "== $name ($(date -u +%T), limit ${lim} s)"
  timeout "$lim" node bin/gpt2-webgpu.js bench "$@" --json > "$out/$name.json" 2> "$out/$name.log"
  echo "exit $? (limit ${lim} s)" >> "$out/$name.log"
}
node bin/gpt2-webgpu.js info --json > "$out/info.json" 2> "$out/info.log"
# The alternatives to the GPU profile's choices, as partial profiles (bench --profile FILE).
prof="$out/profiles"
mkdir -p "$prof"
echo '{"matmul": {"splitK": "split"}}' > "$prof/split.json"
echo '{"matmul": {"gemvMaxM": 64}}' > "$prof/gemv64.json"
echo '{"matmul": {"fuseLn": false}}' > "$prof/ln-off.json"
echo '{"attention": {"decode": "query"}}' > "$prof/attn32.json"
echo '{"matmul": {"gemmTile": {"tx": 16, "ty": 16, "tm": 8, "tn": 8, "bk": 8}}}' > "$prof/t128.json"
echo '{"matmul": {"gemmTile": {"tx": 16, "ty": 16, "tm": 4, "tn": 8, "bk": 16}}}' > "$prof/t64x128.json"
echo "== kernel tests ($(date -u +%T))"
tlim=$(step_limit 180)  # the first step: the budget is never spent here (and timeout 0 would mean no limit)
timeout "$tlim" node scripts/run-tests.js device attention beam-kernel elementwise embedding f16 kvcache layernorm matmul softmax sampling model-random test/quant test/profiles-quant logprobs > "$out/tests.log" 2>&1
echo "exit $? (limit ${tlim} s)" >> "$out/tests.log"
tail -n 3 "$out/tests.log"
# The targets: gpt2 decode at batch 1..64, the 1024-token prefill, gpt2-xl with --f16.
bench gpt2-f32 150 --model "$model" --batch 1,4,16,64 --prompt-tokens 128 --new-tokens 64 --repeat "$rep"
bench gpt2-prefill-1024 90 --model "$model" --prompt-tokens 1024 --new-tokens 1 --repeat "$rep"
bench gpt2-xl-f16 200 --model "$xl" --f16 --batch 1 --prompt-tokens 128 --new-tokens 32 --repeat 3
# Quantized weights and the f16 KV cache on gpt2 (gpt2-xl in q8 / q4 at the end if the budget allows:
# drawing and quantizing its random weights takes over a minute of host time on a 2-core VM).
# f16 beside them: the quantized decode is measured against it (device-summary prints the ratios).
bench gpt2-f16 120 --model "$model" --f16 --batch 1,64 --prompt-tokens 128 --new-tokens 64 --repeat "$rep"
bench gpt2-q8 90 --model "$model" --dtype q8 --batch 1,64 --prompt-tokens 128 --new-tokens 64 --repeat "$rep"
bench gpt2-q4 90 --model "$model" --dtype q4 --batch 1,64 --prompt-tokens 128 --new-tokens 64 --repeat "$rep"
bench gpt2-kv16-long 60 --model "$model" --kv-dtype f16 --batch 1 --prompt-tokens 896 --new-tokens 64 --repeat "$rep"
# The alternatives each kernel choice could take instead (the defaults are set from these).
bench gpt2-f32-split 90 --model "$model" --batch 1,4 --prompt-tokens 128 --new-tokens 64 --repeat "$rep" --profile "$prof/split.json" --no-profile
bench gpt2-f32-gemv64 90 --model "$model" --batch 16,64 --prompt-tokens 128 --new-tokens 64 --repeat "$rep" --profile "$prof/gemv64.json" --no-profile
bench gpt2-f32-ln-off 90 --model "$model" --batch 1 --prompt-tokens 128 --new-tokens 64 --repeat "$rep" --profile "$prof/ln-off.json" --no-profile
bench gpt2-f32-attn32 60 --model "$model" --batch 1 --prompt-tokens 128 --new-tokens 64 --repeat "$rep" --profile "$prof/attn32.json" --no-profile
bench gpt2-f32-long 60 --model "$model" --batch 1 --prompt-tokens 896 --new-tokens 64 --repeat "$rep"
bench gpt2-f32-long-attn32 60 --model "$model" --batch 1 --prompt-tokens 896 --new-tokens 64 --repeat "$rep" --profile "$prof/attn32.json"
bench gpt2-prefill-1024-t128 60 --model "$model" --prompt-tokens 1024 --new-tokens 1 --repeat "$rep" --profile "$prof/t128.json" --no-profile
bench gpt2-prefill-1024-t64x128 60 --model "$model" --prompt-tokens 1024 --new-tokens 1 --repeat "$rep" --profile "$prof/t64x128.json" --no-profile
bench gpt2-xl-f16-split 150 --model "$xl" --f16 --batch 1 --prompt-tokens 128 --new-tokens 32 --repeat 3 --profile "$prof/split.json" --no-profile
bench gpt2-f32-depth1 60 --model "$model" --batch 1 --prompt-tokens 128 --new-tokens 64 --repeat "$rep" --pipeline-depth 1 --no-profile
bench gpt2-sessions 60 --model "$model" --batch 16 --prompt-tokens 128 --new-tokens 32 --repeat 3 --no-profile --sessions
# A closed-loop chat load (16 users, 3 turns each): separate sessions against one session group
# (continuous batching).
lim=$(step_limit 60)
if [ "$lim" -eq 0 ]; then
  echo "skipped: the check's budget of ${budget} s was spent before this step" > "$out/gpt2-chat.log"
else
  echo "== gpt2-chat ($(date -u +%T), limit ${lim} s)"
  timeout "$lim" node bench/chat-load.mjs --model "$model" --users 16 --turns 3 --json > "$out/gpt2-chat.json" 2> "$out/gpt2-chat.log"
  echo "exit $? (limit ${lim} s)" >> "$out/gpt2-chat.log"
fi
bench gpt2-xl-q8 200 --model "$xl" --dtype q8 --batch 1 --prompt-tokens 128 --new-tokens 32 --repeat 3
bench gpt2-xl-q4 200 --model "$xl" --dtype q4 --batch 1 --prompt-tokens 128 --new-tokens 32 --repeat 3
node scripts/device-summary.js "$out"
