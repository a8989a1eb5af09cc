#!/usr/bin/env bash
# One device call after the contiguous-output fix of the kernels (2026-12-03): first in
# parallel (one deadline, LIMIT seconds each)
#  10  kernels-cuda        the kernels test, cuda f32 and bf16 (kernels forced, CPU witness)
#  10  kernels-cuda-units  the same in f32 with decode attention's units-over-keys variant
#5,10  parity-cuda-f32     the fixture parity suite on cuda f32 with the default policy (the
#                          kernels now on for CUDA)
#   9  conf-plugin-ops-f32 the reference plugin's op checks in f32 (kernel and composed variants)
#   8  engine-cuda-f32     the engine's concurrency test on cuda f32, kernels on
#   5  generate-cuda-bf16  phi3v generate in bf16 with CubeCL's compilation log (basic, one line
#                          per kernel compiled): where the bf16 stall sits
#   5  generate-cuda-f16   the same in f16, for comparison
# then alone on the GPU: the kernel breakdown (scripts/gpu_kernels.sh, ours only, beside the
# peer's breakdown measured on 2026-12-03; BREAKDOWN=0 skips it).
# Usage (device tool, carry .gpu): bash scripts/gpu_verify_kernels.sh [seconds per job] [breakdown seconds]
source scripts/gpu_env.sh
LIMIT=${1:-200}; BREAKDOWN=${2:-220}; M=$R/tests/fixtures/models; I=$R/tests/fixtures/images
C=$B/phi3v-plugin-conformance; PL=$B/libphi3v_plugin_cuda.so
GEN="generate --model $M/phi3v-tiny --device cuda --image $I/astronaut.png --prompt What-is-in-the-image --max-new-tokens 10 --json"
job kernels-cuda env PHI3V_TEST_DEVICES=cuda:f32,cuda:bf16 $B/kernels --nocapture
job kernels-cuda-units env PHI3V_KERNELS_OFF=decode_attention_planes PHI3V_TEST_DEVICES=cuda:f32 $B/kernels --nocapture
job parity-cuda-f32 $C --device cuda --parity-only --parity-dtype f32
job conf-plugin-ops-f32 $C --device plugin:$PL:0 --dtypes f32 --ops-only
job engine-cuda-f32 env PHI3V_TEST_DEVICES=cuda:f32 $B/engine concurrent --nocapture
for t in bf16 f16; do
  JOB_TOML='[compilation.logger]\nlevel = "basic"\nfile = "%s/compile.log"\nappend = true\n[autotune]\nlevel = "minimal"\n' \
    job generate-cuda-$t $B/phi3v $GEN --dtype $t
done
wait
for t in bf16 f16; do f=$W/generate-cuda-$t/compile.log; [ -f $f ] && { echo "== $t: $(grep -c . $f) log lines; last:"; tail -3 $f | cut -c1-200; cp $f /tmp/compile-$t.log; }; done
TAIL=6 show kernels-cuda kernels-cuda-units parity-cuda-f32 conf-plugin-ops-f32 engine-cuda-f32 generate-cuda-bf16 generate-cuda-f16 | cut -c1-300
if [ "$BREAKDOWN" != 0 ]; then
  NOSKINNY=1 PEER_JSON=docs/bench/breakdown-h200-kernels/peer.json VARIANTS=ours bash scripts/gpu_kernels.sh $BREAKDOWN > $W/breakdown.log 2>&1
  grep -A18 "^## decode b=1" $W/breakdown.log | head -24; grep "whole step" $W/breakdown.log
fi
collect
cp /tmp/compile-*.log $W/breakdown.log /tmp/res/ 2>/dev/null
tar czf $OUT/round.tgz -C /tmp/res . && ls -la $OUT
