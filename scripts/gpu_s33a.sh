#!/usr/bin/env bash
# Session 33, call 1 (H100 or H200; a pack of HEAD with phi3v, kernels and
# phi3v-plugin-conformance; carry .gpu and .gl). ≤ 560 s. Session 32 made the flash attention
# from register fragments `FlashAttention::Auto`'s pick on CUDA f16/bf16 and turned whole
# waves and `skinny_norm_after` on, measured but with two checks not run on a GPU:
#   1. the fixture parity suite on cuda bf16, then f16, under the new defaults, one job per
#      case (compilation is per process, so the cases compile side by side);
#   2. beside them, the main kernels test on cuda bf16 (it took more than 462 s in session 32:
#      Burn's flash attention compiles and tunes ~40 s per case), with the whole call's time.
source scripts/gpu_env.sh
echo "pack of $(head -1 .gpu/commit.txt)"
mkdir -p $OUT/s33a
# The kernels test runs beside the parity jobs (correctness only: nothing here is timed).
LIMIT=$(( ${END_S:-550} - 10 )) job kernels-bf16 env PHI3V_TEST_DEVICES=cuda:0:bf16 $B/kernels kernels_equal --nocapture
for dt in bf16 f16; do LIMIT=${PARITY_S:-220} parity_dtype $dt $(fixture_cases); done
wait; collect; cp /tmp/res/* $OUT/s33a/ 2>/dev/null
echo "=== kernels"; grep -hE "test result|panicked|rc=|FAIL|mma attention:|staged|577, 577" $W/kernels-bf16/out.txt $W/kernels-bf16/err.txt | cut -c1-230 | head -20
echo "done at $SECONDS s"
(cd $OUT && tar czf s33a.tgz s33a && rm -rf s33a)
