#!/usr/bin/env bash
# Session 27, call 3 (H100; the pack with `CUBECL_CUDA_MEMORY` in patches/cubecl-cuda; carry .gpu
# and .gl). ~400 s, one process at a time on the quiet GPU, bf16, phi3v-128k shapes:
#   1. CubeCL's memory pool for a step's activations, sliced pages (default) against whole
#      pages per allocation (CUBECL_CUDA_MEMORY=exclusive): the decode breakdown at 1 and 10
#      rows (launch floor, host share, whole step), then generation 1024 → 128 through the
#      engine at 1 and 10 parallel requests;
#   2. the `mma` attention kernel once more at prefill 1024 (its padded strides now come from
#      one function on the host and in the kernel).
source scripts/gpu_env.sh
timed_folders s27c
cd $D
BD=(bench breakdown --preset phi3v-128k --device cuda --dtype bf16 --prefill 0 --no-image --decode-batches 1,10 --warmup 3 --runs 20)
GEN="--scenarios generation --shapes 1024x128 --warmup 1 --runs 5 --generation-runs 1 --batching engine --parallel 1,10"
for part in "sliced:" "exclusive:CUBECL_CUDA_MEMORY=exclusive"; do
  name=${part%%:*}; vars=${part#*:}; s=$(date +%s)
  env $vars timeout ${BD_S:-70} $B/phi3v "${BD[@]}" --out $RS/bd-$name > $RS/bd-$name.log 2>&1
  echo "=== breakdown $name (${vars:-defaults}) rc=$? $(( $(date +%s) - s )) s"
  grep -E "^## |whole|Host:|A chain" $RS/bd-$name/breakdown.md 2>/dev/null | cut -c1-200
  bench_parts $RS "gen-$name:$vars:${GEN_S:-90}:$GEN"
done
grep -H "^generation" $RS/*.log | cut -c1-220
timeout 40 $B/phi3v bench attention --device cuda --dtype bf16 --flash "scores;mma" --shapes "1,32,1024,1024,96,causal" --warmup 2 --runs 10 --out $RS/att.json > $RS/att.log 2>&1
echo "=== attention rc=$?"; grep "^|" $RS/att.log | cut -c1-200
cd $R; (cd $OUT && tar czf s27c.tgz s27c && rm -rf s27c)
