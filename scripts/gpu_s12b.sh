#!/usr/bin/env bash
# Session 12's performance call (carry .gpu), alone on the machine (issue 10): the eager
# PyTorch peer's stage breakdown (bench/peer_kernels.py, with the fused projections' composite
# stages), `phi3v bench breakdown` (bf16, phi3v-128k shapes, decode b=1 and b=10 after 1024
# tokens) with the fused projections and, in the same binary, without them
# (PHI3V_KERNELS_OFF=fused_linear); then generation 1024 → 128 at 1 and 10 requests (static
# batching) and the PyTorch peer's static-cache `generate` on the same shapes, and
# `phi3v bench compare`.
# Usage (device tool): bash scripts/gpu_s12b.sh [ours seconds] [peer seconds]
source scripts/gpu_env.sh
OURS=${1:-110}; PEER=${2:-130}
D=/tmp/res; mkdir -p $D
timeout 80 python3 bench/peer_kernels.py --preset cli/presets/phi3v-128k.json --out $D/peer-kernels.json --prefill 0 > $D/peer-kernels.log 2>&1
echo "=== peer kernels rc=$?"
PEER_BD=$D/peer-kernels.json; [ -f $PEER_BD ] || PEER_BD=$R/docs/bench/breakdown-h200-kernels/peer.json
cd target
breakdown() {
  local name=$1; shift
  env "$@" timeout 80 $B/phi3v "${DECODE_BREAKDOWN[@]:0:14}" --peer $PEER_BD --decode-batches 1,10 --out $D/bd-$name > $D/bd-$name.log 2>&1
  echo "=== breakdown $name ($*) rc=$?"; grep "whole step\|Host:\|per kernel" $D/bd-$name.log | cut -c1-200
  grep "_proj\|attention\|append" $D/bd-$name.log | cut -c1-120
}
breakdown fused X=1
breakdown unfused PHI3V_KERNELS_OFF=fused_linear
timeout $OURS $B/phi3v bench run --preset phi3v-128k --device cuda --scenarios generation --parallel 1,10 --batching static \
  --shapes 1024x128 --warmup 1 --runs 3 --out $D/ours > $D/ours.log 2>&1
echo "=== ours rc=$?"; grep "^generation" $D/ours.log
cd $R
timeout $PEER python3 bench/peer_torch.py --preset cli/presets/phi3v-128k.json --out $D/peer.json --ours $D/ours/results.json \
  --scenarios generation --parallel 1,10 --shapes 1024x128 --warmup 1 --runs 3 > $D/peer.log 2>&1
echo "=== peer rc=$?"; grep -v Warning $D/peer.log | grep "^generation" | tail -4
[ -f $D/ours/results.json ] && [ -f $D/peer.json ] && $B/phi3v bench compare $D/ours/results.json $D/peer.json --bandwidth 4.8e12 | tee $D/compare.md | head -8
tar czf $OUT/perf.tgz -C $D . && ls -la $OUT
