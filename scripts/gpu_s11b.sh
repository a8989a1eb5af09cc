#!/usr/bin/env bash
# Session 11's second build on the device (carry .gpu): first alone (issues 8, 10) the decode
# breakdown at b=1 and b=10 and generation 1024 → 128 (static batching and the engine, PARALLEL
# requests); then in parallel, LIMIT seconds each (issues 5, 8, 10): the kernels test on cuda
# f32 + bf16 (the paged decode attention included), the engine's tests on cuda f32, and the
# bf16 fixture parity of the cases the first call left failing or unfinished.
# Usage (device tool): bash scripts/gpu_s11b.sh [job seconds] [bench seconds]
source scripts/gpu_env.sh
LIMIT=${1:-280}; GEN=${2:-200}
D=/tmp/res; mkdir -p $D
cd target
timeout 80 $B/phi3v "${DECODE_BREAKDOWN[@]}" --decode-batches 1,10 --out $D/bd > $D/bd.log 2>&1
echo "=== breakdown rc=$?"; grep "whole step\|Host:\|per kernel" $D/bd.log | cut -c1-200
grep "_proj\|attention" $D/bd.log | cut -c1-120
timeout $GEN $B/phi3v bench run --preset phi3v-128k --device cuda --scenarios generation --parallel ${PARALLEL:-1,10} \
  --shapes 1024x128 --warmup 1 --runs 3 --out $D/ours > $D/ours.log 2>&1
echo "=== ours rc=$?"; grep "^generation" $D/ours.log
cd $R
job kernels-cuda env PHI3V_TEST_DEVICES=cuda:f32,cuda:bf16 $B/kernels --nocapture
job engine-cuda-f32 env PHI3V_TEST_DEVICES=cuda:f32 $B/engine --nocapture
parity_jobs ${CASES:-long_context_two_images coffee_portrait astronaut_describe two_images}
wait
TAIL=8 show kernels-cuda engine-cuda-f32 | grep -v "^cuda .*: [0-9.e-]* vs composed" | cut -c1-250
grep -h "FAIL\|paged\|decode_attention \[1, 32\|linear \[10" $W/kernels-cuda/err.txt $W/kernels-cuda/out.txt | cut -c1-200 | head -20
parity_report
collect
cp $D/*.log /tmp/res/ 2>/dev/null; cp -r $D/bd $D/ours /tmp/res/ 2>/dev/null
tar czf $OUT/round.tgz -C /tmp/res . && ls -la $OUT
