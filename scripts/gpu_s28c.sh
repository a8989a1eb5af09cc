#!/usr/bin/env bash
# Session 28, call 3 (H100 or H200; the pack of 321af47 in .gpu; carry .gpu and .gl). ~560 s,
# bf16 unless said, phi3v-128k shapes, one timed process at a time on the quiet GPU:
#   1. tests on cuda bf16 and f16 side by side: the tensor-core products (staged with 1, 2, 4
#      chunks held ahead; weights from global memory) and the decode attention variants
#      (rows read in vectors, the default now, and one value per lane);
#   2. the decode breakdown at 10 rows: depth 2 (default), 1, 4; the CUDA-core skinny kernel;
#      decode attention one value per lane (`decode_attention_vector` off), also at 1 row;
#   3. generation 1024 → 128 through the engine: defaults at 1 and 10 parallel requests;
#      `decode_attention_vector` off and depth 1 at 10;
#   4. Nsight Compute: the first four `mma_linear` launches at 10 rows, the vector decode
#      attention at 10 rows of 1024 keys, and every kernel's GPU time over 250 launches of
#      batch-1 decode steps.
source scripts/gpu_env.sh
timed_folders s28c
cd $R
for dt in bf16 f16; do
  LIMIT=${TEST_S:-240} job mma-$dt env PHI3V_TEST_DEVICES=cuda:0:$dt $B/kernels tensor_core --nocapture
  LIMIT=${TEST_S:-240} job dec-$dt env PHI3V_TEST_DEVICES=cuda:0:$dt $B/kernels decode_attention_variants --nocapture
done
wait; collect; cp /tmp/res/mma-* /tmp/res/dec-* $RS/ 2>/dev/null
for n in mma-bf16 mma-f16 dec-bf16 dec-f16; do echo "=== $n"
  grep -hE "tensor-core products|read vectors|test result|panicked|rc=|FAIL|\[10, 3072\] · \[3072, 1024\], epilogue 2, staged true, depth 2|1024 keys, 96\]|lengths \[1024" $W/$n/out.txt $W/$n/err.txt | cut -c1-200 | head -12
  grep -q "test result: ok" $W/$n/out.txt || grep -v "^\s*$" $W/$n/err.txt | grep -v "mma_linear \[\|decode_attention \[\|s  " | tail -6 | cut -c1-300; done
cd $D
BD=(bench breakdown --preset phi3v-128k --device cuda --dtype bf16 --prefill 0 --no-image --warmup 3 --runs 20)
for part in "d2:1,10:" "d1:10:PHI3V_MMA_LINEAR=8,64,4,1,1" "d4:10:PHI3V_MMA_LINEAR=8,64,4,1,4" "skinny:10:PHI3V_KERNELS_OFF=mma_linear" "attplanes:1,10:PHI3V_KERNELS_OFF=decode_attention_vector"; do
  IFS=: read -r name rows vars <<< "$part"
  env $vars timeout ${BD_S:-50} $B/phi3v "${BD[@]}" --decode-batches $rows --out $RS/bd-$name > $RS/bd-$name.log 2>&1
  echo "=== breakdown $name (${vars:-defaults}) rc=$?"
  grep -E "^## |proj|attention|whole" $RS/bd-$name/breakdown.md 2>/dev/null | grep -v "^# " | cut -c1-150 | head -14
done
GEN="--scenarios generation --shapes 1024x128 --warmup 1 --runs 5 --generation-runs 1 --batching engine"
TAIL=3 bench_parts $RS "gen-default::${GEN_S:-75}:$GEN --parallel 1,10" "gen-attplanes:PHI3V_KERNELS_OFF=decode_attention_vector:${GEN_S:-55}:$GEN --parallel 10" "gen-d1:PHI3V_MMA_LINEAR=8,64,4,1,1:${GEN_S:-55}:$GEN --parallel 10"
grep -H "^generation" $RS/*.log | cut -c1-220
BD1=(bench breakdown --preset phi3v-128k --device cuda --dtype bf16 --prefill 0 --no-image --decode-batches 10 --warmup 0 --runs 1)
for part in "mma:mma_linear:4" "att:decode_attention:2"; do
  IFS=: read -r name kernel count <<< "$part"
  timeout ${NCU_S:-50} $NCU --kernel-name regex:$kernel --launch-count $count $NCU_SECTIONS $B/phi3v "${BD1[@]}" --out $RS/ncu-bd-$name > $RS/ncu-$name.txt 2>&1
  echo "=== ncu $name rc=$?"; ncu_report $RS/ncu-$name.txt
done
timeout ${TIMELINE_S:-70} $NCU --metrics gpu__time_duration.sum --csv --launch-skip ${SKIP:-3000} --launch-count 250 \
  $B/phi3v bench run --preset phi3v-128k --device cuda --dtype bf16 --scenarios generation --shapes 1024x64 --warmup 0 --runs 1 --generation-runs 1 --batching engine --parallel 1 --out $RS/tl1 > $RS/ncu-tl1.csv 2> $RS/ncu-tl1.err
echo "=== ncu timeline b=1 rc=$?"; tail -2 $RS/ncu-tl1.err | cut -c1-200
python3 $R/bench/ncu_kernel_times.py $RS/ncu-tl1.csv
cd $R; (cd $OUT && tar czf s28c.tgz s28c && rm -rf s28c)
