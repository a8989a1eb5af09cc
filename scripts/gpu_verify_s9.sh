#!/usr/bin/env bash
# One device call after session 9's changes (weights in persistent memory, fused residual add +
# RMSNorm, rotary + head split + KV-cache append in one kernel, no copy of a decode step's
# attention output). First in parallel (LIMIT seconds each):
#  10  kernels-cuda     the kernels test on cuda f32 and bf16 (CPU witness), new kernels included
#   9  conf-ops-cuda    the per-op checks on cuda f32 (kernel and composed variants)
#   5  parity-cuda-f32  the fixture parity suite on cuda f32 (kernels on by default)
#   8  engine-cuda-f32  the engine's concurrency test on cuda f32
# then alone on the GPU:
#  10  breakdown        `phi3v bench breakdown` (bf16, phi3v-128k, decode b=1 and b=10 after
#                       1024 tokens; prefill PREFILL tokens, default none) with the host profile of 100 steps per phase
#  6,10 generation      `phi3v bench run --scenarios generation` at 1 and 10 parallel requests,
#                       1024 → 128, then the PyTorch peer on the same shapes (static-cache
#                       `generate`) and `phi3v bench compare`
# Usage (device tool, carry .gpu): bash scripts/gpu_verify_s9.sh [job seconds] [breakdown s] [ours s] [peer s] (0 s: skipped)
source scripts/gpu_env.sh
LIMIT=${1:-110}; BD=${2:-160}; OURS=${3:-130}; PEER=${4:-110}
C=$B/phi3v-plugin-conformance; mkdir -p /tmp/res
job kernels-cuda env PHI3V_TEST_DEVICES=cuda:f32,cuda:bf16 $B/kernels --nocapture
# SHORT=1: the kernels test and the parity suite only.
if [ -z "${SHORT:-}" ]; then
job conf-ops-cuda $C --device cuda --dtypes f32 --ops-only
job engine-cuda-f32 env PHI3V_TEST_DEVICES=cuda:f32 $B/engine concurrent --nocapture
fi
job parity-cuda-f32 $C --device cuda --parity-only --parity-dtype f32
wait
TAIL=8 show kernels-cuda conf-ops-cuda parity-cuda-f32 engine-cuda-f32 | grep -v "^cuda .*: [0-9.e-]* vs composed" | cut -c1-250
grep -h "FAIL\|add_rms\|rotary_append\|rotary + KV" $W/kernels-cuda/err.txt $W/conf-ops-cuda/out.txt | cut -c1-200
D=/tmp/res; cd target
timeout $BD $B/phi3v bench breakdown --preset phi3v-128k --device cuda --dtype bf16 --decode-batches 1,10 --prefill ${PREFILL:-0} \
  --warmup 3 --runs 20 --profile $D/profile --profile-steps 100 --peer $R/docs/bench/breakdown-h200-kernels/peer.json \
  --out $D/breakdown > $D/breakdown.log 2>&1
echo "breakdown rc=$?"; grep -A14 "^## decode b=1" $D/breakdown.log | head -18; grep "whole step\|Host:" $D/breakdown.log
for f in $D/profile/decode-b1.top.md; do grep -A12 "^## " $f | cut -c1-200; done
SHAPES="--scenarios generation --parallel 1,10 --shapes 1024x128 --warmup 1 --runs 3"
[ "$OURS" != 0 ] && timeout $OURS $B/phi3v bench run --preset phi3v-128k --device cuda $SHAPES --out $D/ours > $D/ours.log 2>&1
echo "ours rc=$?"; grep -v "^\s*$" $D/ours.log | tail -12
cd $R
[ "$PEER" != 0 ] && timeout $PEER python3 bench/peer_torch.py --preset cli/presets/phi3v-128k.json --out $D/peer.json --ours $D/ours/results.json $SHAPES > $D/peer.log 2>&1
echo "peer rc=$?"; grep -v Warning $D/peer.log 2>/dev/null | tail -8
[ -f $D/ours/results.json ] && [ -f $D/peer.json ] && $B/phi3v bench compare $D/ours/results.json $D/peer.json --bandwidth 4.8e12 | tee $D/compare.md
collect
tar czf $OUT/round.tgz -C /tmp/res . && ls -la $OUT
