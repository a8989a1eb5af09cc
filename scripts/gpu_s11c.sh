#!/usr/bin/env bash
# Session 11's last device call (carry .gpu): alone, the decode breakdown at b=1 and b=10 and
# static-batch generation 1024 → 128 at 1 and 10 requests (issue 10: the skinny product's
# column planes above 3 rows); then in parallel, LIMIT seconds each (issues 5, 10): the kernels
# test on cuda bf16 and the bf16 fixture parity of long_context_two_images (long attention now
# composed in chunks in every dtype).
# Usage (device tool): bash scripts/gpu_s11c.sh [job seconds]
source scripts/gpu_env.sh
LIMIT=${1:-280}
D=/tmp/res; mkdir -p $D
cd target
timeout 70 $B/phi3v "${DECODE_BREAKDOWN[@]}" --decode-batches 1,10 --out $D/bd > $D/bd.log 2>&1
echo "=== breakdown rc=$?"; grep "whole step\|Host:\|per kernel" $D/bd.log | cut -c1-200
grep "_proj\|attention" $D/bd.log | cut -c1-120
timeout 100 $B/phi3v bench run --preset phi3v-128k --device cuda --scenarios generation --parallel 1,10 --batching static \
  --shapes 1024x128 --warmup 1 --runs 3 --out $D/ours > $D/ours.log 2>&1
echo "=== ours rc=$?"; grep "^generation" $D/ours.log
cd $R
job kernels-cuda-bf16 env PHI3V_TEST_DEVICES=cuda:bf16 $B/kernels --nocapture
parity_jobs ${CASES:-long_context_two_images}
wait
TAIL=8 show kernels-cuda-bf16 | grep -v "^cuda .*: [0-9.e-]* vs composed" | cut -c1-250
grep -h "FAIL\|paged\|linear \[10\|linear \[16\|linear \[4," $W/kernels-cuda-bf16/err.txt $W/kernels-cuda-bf16/out.txt | cut -c1-200 | head -20
parity_report
collect
cp $D/*.log /tmp/res/ 2>/dev/null; cp -r $D/bd $D/ours /tmp/res/ 2>/dev/null
tar czf $OUT/round.tgz -C /tmp/res . && ls -la $OUT
