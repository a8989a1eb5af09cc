#!/usr/bin/env bash
# Session 31, call 1 (H100 or H200; a pack of phi3v and the kernels test in .gpu; carry .gpu
# and .gl). ≤ 400 s, bf16, phi3v-128k shapes, one timed process at a time:
#   1. the tensor-core products' test on cuda bf16 and f16 side by side, register fragments
#      only: strided blocks, runs of adjacent blocks (`mma_linear_runs`) and cubes fitted to
#      whole waves (`mma_fragments_waves`, new: 5 tiles, 32 planes);
#   2. the decode breakdown at 10 rows: the default (fragments 16,32,4,3,2, strided), whole
#      waves from 16 planes and up to 64 columns (with and without runs), up to 32 columns,
#      from 32 planes, runs alone, the `cmma` register kernel, then the default and waves again;
#   3. generation 1024 → 128 through the engine, 10 parallel requests (8 runs): a first run
#      that compiles, then the default and the fastest variant alternating, twice each;
#   4. Nsight Compute on the whole-wave shapes' first four products (registers, occupancy).
source scripts/gpu_env.sh
timed_folders s31a
cd $R
for dt in bf16 f16; do
  LIMIT=${TEST_S:-200} job mma-$dt env PHI3V_TEST_DEVICES=cuda:0:$dt PHI3V_TEST_MMA_READS=3 $B/kernels tensor_core --nocapture
done
wait; collect; cp /tmp/res/mma-* $RS/ 2>/dev/null
for n in mma-bf16 mma-f16; do echo "=== $n"
  grep -hE "tensor-core products|test result|panicked|rc=|FAIL|\[10, 64\] · \[64, 9216\].*waves" $W/$n/out.txt $W/$n/err.txt | cut -c1-230 | head -14
  grep -q "test result: ok" $W/$n/out.txt || grep -v "^\s*$" $W/$n/err.txt | grep -v "mma_linear \[\|s  " | tail -8 | cut -c1-300; done
echo "tests done at $SECONDS s"
cd $D
ON=PHI3V_KERNELS_ON
VARIANTS=("def:" "w64:PHI3V_MMA_LINEAR=16,64,4,3,2 $ON=mma_fragments_waves" "w64r:PHI3V_MMA_LINEAR=16,64,4,3,2 $ON=mma_fragments_waves,mma_linear_runs"
  "runs:$ON=mma_linear_runs" "w32:$ON=mma_fragments_waves" "w64p32:PHI3V_MMA_LINEAR=32,64,4,3,2 $ON=mma_fragments_waves"
  "w64p8:PHI3V_MMA_LINEAR=8,64,4,3,4 $ON=mma_fragments_waves" "reg:PHI3V_MMA_LINEAR=8,64,4,1,1" "def2:" "w64b:PHI3V_MMA_LINEAR=16,64,4,3,2 $ON=mma_fragments_waves")
BD_S=${BD_S:-35} breakdown_variants ${BD_UNTIL:-330} "${VARIANTS[@]}" > /dev/null
BEST=$(python3 $R/bench/breakdown_projections.py --prefix PHI3V_ "$RS" "${VARIANTS[@]}")
echo "fastest variant: ${BEST:-none} at $SECONDS s"
GEN="--scenarios generation --shapes 1024x128 --warmup 1 --runs 8 --generation-runs 1 --batching engine --parallel 10"
if [ $SECONDS -lt ${GEN_UNTIL:-330} ]; then
  TAIL=1 bench_parts $RS "gen-compile::${GEN_S:-45}:$GEN" "gen-default-1::${GEN_S:-45}:$GEN" ${BEST:+"gen-best-1:$BEST:${GEN_S:-45}:$GEN"} \
    "gen-default-2::${GEN_S:-45}:$GEN" ${BEST:+"gen-best-2:$BEST:${GEN_S:-45}:$GEN"} > /dev/null
  grep -H "^generation" $RS/gen-*.log | cut -c1-220
fi
BD1=(bench breakdown --preset phi3v-128k --device cuda --dtype bf16 --prefill 0 --no-image --decode-batches 10 --warmup 0 --runs 1)
if [ $SECONDS -lt ${NCU_UNTIL:-380} ]; then
  env PHI3V_MMA_LINEAR=16,64,4,3,2 $ON=mma_fragments_waves timeout ${NCU_S:-40} $NCU --kernel-name regex:mma_linear_fragments --launch-count 4 $NCU_SECTIONS $B/phi3v "${BD1[@]}" --out $RS/ncu-bd > $RS/ncu-waves.txt 2>&1
  echo "=== ncu waves rc=$?"; ncu_report $RS/ncu-waves.txt | grep -v "µs$" | grep -E "mma_linear|DRAM|Duration|Registers|Theoretical|Achieved|Grid|Block Limit"
fi
echo "done at $SECONDS s"
cd $R; (cd $OUT && tar czf s31a.tgz s31a && rm -rf s31a)
