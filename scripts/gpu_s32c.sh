#!/usr/bin/env bash
# Session 32, call 3 (H100 or H200; the pack of 916a3e0: phi3v and the kernels test; carry .gpu
# and .gl). ≤ 540 s. Call 1 (gpu_s31a.sh, short) found whole waves of fragment cubes (16,64
# with `mma_fragments_waves`) 2 % faster per decode step at 10 rows and its tests too slow for
# 110 s. This call:
#   1. generation 1024 → 128 through the engine, 10 parallel requests: a run that compiles,
#      then the default and whole waves alternating, twice each;
#   2. the b=1 breakdown: the skinny product's default against `skinny_norm_after`, the early
#      values, and whole waves at one row;
#   3. the tests of call 1 with 270 s: the tensor-core products (bf16), the main kernels test
#      (bf16; its flash attention as register fragments) side by side.
source scripts/gpu_env.sh
echo "pack of $(head -1 .gpu/commit.txt)"
timed_folders s32c
cd $D
ON=PHI3V_KERNELS_ON; W64="PHI3V_MMA_LINEAR=16,64,4,3,2 $ON=mma_fragments_waves"
GEN="--scenarios generation --shapes 1024x128 --warmup 1 --runs 8 --generation-runs 1 --batching engine --parallel 10"
TAIL=1 bench_parts $RS "gen-compile::${GEN_S:-45}:$GEN" "gen-default-1::${GEN_S:-45}:$GEN" "gen-w64-1:$W64:${GEN_S:-45}:$GEN" \
  "gen-default-2::${GEN_S:-45}:$GEN" "gen-w64-2:$W64:${GEN_S:-45}:$GEN" > /dev/null
grep -H "^generation" $RS/gen-*.log | sed 's|.*/gen-||' | cut -c1-230
B1=("b1-def:" "b1-after:$ON=skinny_norm_after" "b1-early:$ON=decode_attention_early_values" "b1-w64:PHI3V_MMA_LINEAR=16,64,1,3,2 $ON=mma_fragments_waves"
  "b1-def2:" "b1-after2:$ON=skinny_norm_after" "b1-both:$ON=skinny_norm_after,decode_attention_early_values" "b1-s442:PHI3V_SKINNY=4,4,2" "b1-s841:PHI3V_SKINNY=8,4,1")
BD_ROWS=1 BD_S=${BD_S:-35} breakdown_variants 100000 "${B1[@]}" | grep "panicked\|rror"
python3 $R/bench/breakdown_projections.py --prefix PHI3V_ "$RS" "${B1[@]}" > /dev/null
grep -H "whole step" $RS/bd-b1-*/breakdown.md | sed 's|.*/bd-||' | cut -c1-120
grep -H "^| attention \|^| .*norm.*qkv\|^| .*gate_up" $RS/bd-b1-def/breakdown.md $RS/bd-b1-after/breakdown.md | sed 's|.*/bd-||' | cut -c1-120
echo "benchmarks done at $SECONDS s"
cd $R
T=$(( ${END_S:-520} - SECONDS )); echo "tests get $T s"
LIMIT=$T job mma-bf16 env PHI3V_TEST_DEVICES=cuda:0:bf16 PHI3V_TEST_MMA_READS=3 $B/kernels tensor_core --nocapture
LIMIT=$T job kernels-bf16 env PHI3V_TEST_DEVICES=cuda:0:bf16 $B/kernels kernels_equal --nocapture
wait; collect; cp /tmp/res/mma-* /tmp/res/kernels-* $RS/ 2>/dev/null
echo "=== kernels"; grep -hE "test result|panicked|rc=|FAIL|mma attention:|577, 577" $W/kernels-bf16/out.txt $W/kernels-bf16/err.txt | cut -c1-230 | head -14
echo "=== mma-bf16"; grep -hE "tensor-core products|test result|panicked|rc=|FAIL|waves" $W/mma-bf16/out.txt $W/mma-bf16/err.txt | cut -c1-230 | head -14
echo "done at $SECONDS s"
(cd $OUT && tar czf s32c.tgz s32c && rm -rf s32c)
