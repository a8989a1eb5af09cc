#!/usr/bin/env bash
# Session 27, call 3 (H100; the pack with the staged tensor-core product and `CUBECL_CUDA_MEMORY`
# in patches/cubecl-cuda; carry .gpu and .gl). ~450 s, one process at a time on the quiet GPU,
# bf16, phi3v-128k shapes:
#   1. the tensor-core products against the composed ones on cuda bf16, staged and straight
#      from global memory (the kernels test's `tensor_core_products_equal_the_composed_ones`);
#   2. the decode breakdown at 1 and 10 rows: defaults (staged `mma_linear`, sliced memory
#      pages), `mma_linear` reading its tiles from global memory (call 2's kernel), the CUDA-core
#      skinny kernel, and whole pages per allocation (CUBECL_CUDA_MEMORY=exclusive);
#   3. generation 1024 → 128 through the engine at 1 and 10 parallel requests for the defaults,
#      the skinny kernel and whole pages (8 runs each: call 2's 5 left the 10-request figures
#      within their spread);
#   4. the `mma` attention kernel at prefill 1024 (its strides now from `MmaStrides`).
source scripts/gpu_env.sh
timed_folders s27c
cd $R
LIMIT=${TEST_S:-200} job mma-bf16 env PHI3V_TEST_DEVICES=cuda:0:bf16 $B/kernels tensor_core --nocapture
wait; collect; cp /tmp/res/mma-* $RS/ 2>/dev/null
grep -hE "mma_linear|tensor-core|test result|panicked|FAIL|rc=" $W/mma-bf16/out.txt $W/mma-bf16/err.txt | cut -c1-200 | head -24
grep -q "test result: ok" $W/mma-bf16/out.txt || { echo "the test did not pass"; grep -v "^\s*$" $W/mma-bf16/err.txt | grep -v "mma_linear \[" | tail -12 | cut -c1-300; }
cd $D
BD=(bench breakdown --preset phi3v-128k --device cuda --dtype bf16 --prefill 0 --no-image --decode-batches 1,10 --warmup 3 --runs 20)
for part in "staged:" "direct:PHI3V_MMA_LINEAR=8,64,4,0" "skinny:PHI3V_KERNELS_OFF=mma_linear" "exclusive:CUBECL_CUDA_MEMORY=exclusive"; do
  name=${part%%:*}; vars=${part#*:}; s=$(date +%s)
  env $vars timeout ${BD_S:-60} $B/phi3v "${BD[@]}" --out $RS/bd-$name > $RS/bd-$name.log 2>&1
  echo "=== breakdown $name (${vars:-defaults}) rc=$? $(( $(date +%s) - s )) s"
  grep -E "^## |proj|whole|Host:|A chain" $RS/bd-$name/breakdown.md 2>/dev/null | cut -c1-170
done
GEN="--scenarios generation --shapes 1024x128 --warmup 1 --runs 8 --generation-runs 1 --batching engine --parallel 1,10"
TAIL=3 bench_parts $RS "gen-staged::${GEN_S:-70}:$GEN" "gen-skinny:PHI3V_KERNELS_OFF=mma_linear:${GEN_S:-70}:$GEN" "gen-exclusive:CUBECL_CUDA_MEMORY=exclusive:${GEN_S:-70}:$GEN"
grep -H "^generation" $RS/*.log | cut -c1-220
timeout 40 $B/phi3v bench attention --device cuda --dtype bf16 --flash "scores;mma" --shapes "1,32,1024,1024,96,causal" --warmup 2 --runs 10 --out $RS/att.json > $RS/att.log 2>&1
echo "=== attention rc=$?"; grep "^|" $RS/att.log | cut -c1-200
cd $R; (cd $OUT && tar czf s27c.tgz s27c && rm -rf s27c)
