#!/usr/bin/env bash
# Session 27, call 2 (H100; the pack with the tensor-core few-row products, `mma_linear`, in
# .gpu; carry .gpu and .gl). ~480 s:
#   1. the tensor-core products against the composed ones on cuda bf16 and f16 (the kernels
#      test's `tensor_core_products_equal_the_composed_ones`, side by side; ${TEST_S:-200} s);
#   2. if they pass, one process at a time on the quiet GPU: the decode breakdown at 10 rows
#      (bf16, phi3v-128k shapes, 1024 cached tokens) with `mma_linear` (default shape, then 16
#      planes, then chunks of 256) and without it (the CUDA-core skinny kernel);
#   3. 10 parallel requests through the engine, 1024 → 128, with and without it.
source scripts/gpu_env.sh
timed_folders s27b
cd $R
for dt in bf16 f16; do LIMIT=${TEST_S:-200} job mma-$dt env PHI3V_TEST_DEVICES=cuda:0:$dt $B/kernels tensor_core --nocapture; done
wait; collect; cp /tmp/res/mma-* $RS/ 2>/dev/null
for dt in bf16 f16; do echo "=== mma-$dt"; grep -hE "mma_linear|tensor-core|test result|panicked|FAIL|rc=" $W/mma-$dt/out.txt $W/mma-$dt/err.txt | cut -c1-200 | head -14; done
if ! grep -q "test result: ok" $W/mma-bf16/out.txt; then echo "bf16 test did not pass: no benchmarks"; grep -v "^\s*$" $W/mma-bf16/err.txt | tail -20 | cut -c1-300; (cd $OUT && tar czf s27b.tgz s27b && rm -rf s27b); exit 0; fi
cd $D
BD=(bench breakdown --preset phi3v-128k --device cuda --dtype bf16 --prefill 0 --no-image --decode-batches 10 --warmup 3 --runs 20)
for part in "mma:" "skinny:PHI3V_KERNELS_OFF=mma_linear" "p16:PHI3V_MMA_LINEAR=16,128,4" "c256:PHI3V_MMA_LINEAR=8,256,4"; do
  name=${part%%:*}; vars=${part#*:}; s=$(date +%s)
  env $vars timeout ${BD_S:-60} $B/phi3v "${BD[@]}" --out $RS/bd-$name > $RS/bd-$name.log 2>&1
  echo "=== breakdown $name (${vars:-defaults}) rc=$? $(( $(date +%s) - s )) s"
  grep -E "proj|attention \||whole|Sum of" $RS/bd-$name/breakdown.md 2>/dev/null | head -9 | cut -c1-160
done
GEN="--scenarios generation --shapes 1024x128 --warmup 1 --runs 5 --generation-runs 1 --batching engine --parallel 10"
bench_parts $RS "ten::${TEN_S:-60}:$GEN" "ten-skinny:PHI3V_KERNELS_OFF=mma_linear:${TEN_S:-60}:$GEN"
grep -H "^generation" $RS/*.log | cut -c1-220
cd $R; (cd $OUT && tar czf s27b.tgz s27b && rm -rf s27b)
