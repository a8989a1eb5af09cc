#!/usr/bin/env bash
# Session 10's performance call: `phi3v bench breakdown` (decode b=1 and b=10 after 1024
# tokens, launch floor), then generation 1024 → 128 in bf16 at PARALLEL requests,
# static batching and the engine (`phi3v bench run --scenarios generation`), then the PyTorch
# peer on the same shapes in the same call (static-cache `generate`), and `phi3v bench compare`.
# Usage (device tool, carry .gpu): [SKINNY_AB=1] [NO_BREAKDOWN=1] [PARALLEL=1,10] bash scripts/gpu_s10_gen.sh [ours seconds] [peer seconds] [breakdown seconds]
source scripts/gpu_env.sh
OURS=${1:-200}; PEER=${2:-150}; BD=${3:-120}; D=/tmp/res2; mkdir -p $D
SHAPES="--scenarios generation --parallel ${PARALLEL:-1,10,64} --shapes 1024x128 --warmup 1 --runs 3"
# The peer at 1 and 10 requests (its 64 would not fit the call).
PEER_SHAPES="--scenarios generation --parallel ${PEER_PARALLEL:-1,10} --shapes 1024x128 --warmup 1 --runs 3"
cd target
# NO_BREAKDOWN=1: generation and the peer only (a breakdown ran in an earlier call).
if [ -z "${NO_BREAKDOWN:-}" ]; then
  timeout $BD $B/phi3v "${DECODE_BREAKDOWN[@]}" --decode-batches 1,10 --out $D/breakdown > $D/breakdown.log 2>&1
  echo "breakdown rc=$?"; grep "whole step\|Host:\|per kernel" $D/breakdown.log | cut -c1-200
fi
# SKINNY_AB=1: the same breakdown with one-row products through the skinny kernel
# (PHI3V_SKINNY_MIN_ROWS=1; run the kernels test on cuda first: it checks that kernel at one row).
if [ -n "${SKINNY_AB:-}" ]; then
  PHI3V_SKINNY_MIN_ROWS=1 timeout $BD $B/phi3v "${DECODE_BREAKDOWN[@]}" --decode-batches 1 --out $D/breakdown-m1 > $D/breakdown-m1.log 2>&1
  echo "breakdown one-row skinny rc=$?"; grep "whole step\|Host:\|_proj" $D/breakdown-m1.log | cut -c1-200
fi
timeout $OURS $B/phi3v bench run --preset phi3v-128k --device cuda $SHAPES --out $D/ours > $D/ours.log 2>&1
echo "ours rc=$?"; grep -v "^\s*$" $D/ours.log | grep -v "━\|%|" | tail -14
cd $R
timeout $PEER python3 bench/peer_torch.py --preset cli/presets/phi3v-128k.json --out $D/peer.json --ours $D/ours/results.json $PEER_SHAPES > $D/peer.log 2>&1
echo "peer rc=$?"; grep -v Warning $D/peer.log | tail -8
[ -f $D/ours/results.json ] && [ -f $D/peer.json ] && $B/phi3v bench compare $D/ours/results.json $D/peer.json --bandwidth 4.8e12 | tee $D/compare.md
tar czf $OUT/gen.tgz -C $D . && ls -la $OUT
