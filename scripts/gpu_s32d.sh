#!/usr/bin/env bash
# Session 32, call 4 (H100 or H200; the pack of 916a3e0; carry .gpu and .gl). ≤ 240 s. Call 3's
# b=1 breakdown had the skinny product's norm from squares summed beside its products
# (`skinny_norm_after`) at 4.04 ms per step twice against the default's 4.16 and 4.18. This
# call: generation 1024 → 128 through the engine, one request, a run that compiles, then the
# default and `skinny_norm_after` alternating, twice each.
source scripts/gpu_env.sh
echo "pack of $(head -1 .gpu/commit.txt)"
timed_folders s32d
cd $D
AFTER="PHI3V_KERNELS_ON=skinny_norm_after"
GEN="--scenarios generation --shapes 1024x128 --warmup 1 --runs 8 --generation-runs 1 --batching engine --parallel 1"
TAIL=1 bench_parts $RS "gen1-compile::${GEN_S:-40}:$GEN" "gen1-default-1::${GEN_S:-40}:$GEN" "gen1-after-1:$AFTER:${GEN_S:-40}:$GEN" \
  "gen1-default-2::${GEN_S:-40}:$GEN" "gen1-after-2:$AFTER:${GEN_S:-40}:$GEN" > /dev/null
grep -H "^generation" $RS/gen1-*.log | sed 's|.*/gen1-||' | cut -c1-230
echo "done at $SECONDS s"
(cd $OUT && tar czf s32d.tgz s32d && rm -rf s32d)
