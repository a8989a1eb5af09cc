#!/usr/bin/env bash
# Session 34, call 3 (the warm machine of call 2; same pack). ≤ 420 s. The cubecl-runtime
# patch's exact-size reservations at 10 parallel requests (engine, 1024 → 128; prediction
# +3 to +10 % tokens/s per request) and a third b=1 alternation; then one b=1 run with
# CUBECL_POOL_STATS=1 (how many reservations found an exact slice, how many slices the pools
# held) under each setting.
source scripts/gpu_env.sh
echo "pack of $(head -1 .gpu/commit.txt)"
timed_folders s34c
cd $D
UP="CUBECL_POOL_EXACT_FIRST=0"
GEN10="--scenarios generation --shapes 1024x128 --warmup 1 --runs 8 --generation-runs 1 --batching engine --parallel 10"
alternate $RS gen10 ${GEN_S:-50} "$GEN10" exact "" upstream "$UP"
GEN="--scenarios generation --shapes 1024x128 --warmup 1 --runs 8 --generation-runs 1 --batching engine --parallel 1"
TAIL=1 bench_parts $RS "gen1-exact-3::${GEN_S:-45}:$GEN" "gen1-upstream-3:$UP:${GEN_S:-45}:$GEN" \
  "gen1-stats-exact:CUBECL_POOL_STATS=1:${GEN_S:-45}:$GEN" "gen1-stats-upstream:CUBECL_POOL_STATS=1 $UP:${GEN_S:-45}:$GEN" > /dev/null
for f in $RS/gen1-stats-*.log; do echo "== $(basename $f)"; grep "cubecl pool" $f | tail -2; done
echo "done at $SECONDS s"
(cd $OUT && tar czf s34c.tgz s34c && rm -rf s34c)
