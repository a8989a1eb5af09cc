#!/usr/bin/env bash
# Session 29, call 3 (H100 or H200; the pack of 2ddd928 in .gpu, as call 2). ≤ 200 s, bf16,
# phi3v-128k shapes, one timed process at a time. Calls 1 and 2 ran the default before the
# copied product, each once, and the copied product came out +8 % in generation but not in the
# breakdown: here each twice in alternating order (default, copied, default, copied), the
# generation first (10 parallel requests, 1024 → 128, 8 runs), then the breakdown at 10 rows,
# with two more copied shapes (ring of 2; 16 planes).
source scripts/gpu_env.sh
timed_folders s29c
cd $D
CP=PHI3V_MMA_LINEAR=8,128,4,2,2
GEN="--scenarios generation --shapes 1024x128 --warmup 1 --runs 8 --generation-runs 1 --batching engine --parallel 10"
# A first run compiles and tunes every kernel the later runs take, so that no run pays for it.
timeout 60 $B/phi3v bench run --preset phi3v-128k --device cuda $GEN --out $RS/gen-compile > $RS/gen-compile.log 2>&1
env $CP timeout 40 $B/phi3v bench run --preset phi3v-128k --device cuda $GEN --out $RS/gen-compile-cp > $RS/gen-compile-cp.log 2>&1
echo "compiled at $SECONDS s"
TAIL=1 bench_parts $RS "gen-default-1::40:$GEN" "gen-copied-1:$CP:40:$GEN" "gen-default-2::40:$GEN" "gen-copied-2:$CP:40:$GEN"
VARIANTS=("reg1a:" "cpa:$CP" "reg1b:" "cpb:$CP" "c128cp1:PHI3V_MMA_LINEAR=8,128,4,2,1" "p16cp2:PHI3V_MMA_LINEAR=16,64,4,2,2")
BD_S=30 breakdown_variants ${BD_UNTIL:-170} "${VARIANTS[@]}" > /dev/null
python3 $R/bench/breakdown_projections.py "$RS" "${VARIANTS[@]}" > /dev/null
grep -H "^generation" $RS/gen-*.log | cut -c1-200
echo "done at $SECONDS s"
cd $R; (cd $OUT && tar czf s29c.tgz s29c && rm -rf s29c)
