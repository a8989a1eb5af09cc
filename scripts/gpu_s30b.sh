#!/usr/bin/env bash
# Session 30, call 2 (H100 or H200; a pack of phi3v and the kernels test in .gpu; carry .gpu
# and .gl). ≤ 420 s, bf16, phi3v-128k shapes, one timed process at a time:
#   1. the tensor-core products' test on cuda bf16 and f16 side by side, register fragments
#      only (now also runs of adjacent blocks, and strided as call 1);
#   2. the decode breakdown at 10 rows: the default (registers); fragments in runs of `depth`
#      adjacent blocks (`mma_linear_runs`, new) against strided (call 1's), at call 1's
#      fastest shapes, and more planes or depth;
#   3. generation 1024 → 128 through the engine, 10 parallel requests (8 runs): default and
#      the fastest fragments shape alternating, twice each, after a first run that compiles;
#   4. Nsight Compute on the fastest fragments shape's first four products.
source scripts/gpu_env.sh
timed_folders s30b
cd $R
for dt in bf16 f16; do
  LIMIT=${TEST_S:-180} job mma-$dt env PHI3V_TEST_DEVICES=cuda:0:$dt PHI3V_TEST_MMA_READS=3 $B/kernels tensor_core --nocapture
done
wait; collect; cp /tmp/res/mma-* $RS/ 2>/dev/null
for n in mma-bf16 mma-f16; do echo "=== $n"
  grep -hE "tensor-core products|test result|panicked|rc=|FAIL|\[10, 96\] · \[96, 17408\]" $W/$n/out.txt $W/$n/err.txt | cut -c1-230 | head -14
  grep -q "test result: ok" $W/$n/out.txt || grep -v "^\s*$" $W/$n/err.txt | grep -v "mma_linear \[\|s  " | tail -8 | cut -c1-300; done
echo "tests done at $SECONDS s"
cd $D
S=PHI3V_KERNELS_OFF=mma_linear_runs
VARIANTS=("reg1:" "f16c32d2:PHI3V_MMA_LINEAR=16,32,4,3,2" "f16c32d2s:PHI3V_MMA_LINEAR=16,32,4,3,2 $S" "f8c16d4:PHI3V_MMA_LINEAR=8,16,4,3,4"
  "f8c16d4s:PHI3V_MMA_LINEAR=8,16,4,3,4 $S" "f8c32d2:PHI3V_MMA_LINEAR=8,32,4,3,2" "f16c32d4:PHI3V_MMA_LINEAR=16,32,4,3,4" "f4c16d4:PHI3V_MMA_LINEAR=4,16,4,3,4"
  "reg1b:")
BD_S=${BD_S:-35} breakdown_variants ${BD_UNTIL:-300} "${VARIANTS[@]}" > /dev/null
BEST=$(python3 $R/bench/breakdown_projections.py "$RS" "${VARIANTS[@]}")
echo "fastest fragments: ${BEST:-none} at $SECONDS s"
GEN="--scenarios generation --shapes 1024x128 --warmup 1 --runs 8 --generation-runs 1 --batching engine --parallel 10"
if [ $SECONDS -lt ${GEN_UNTIL:-250} ]; then
  TAIL=1 bench_parts $RS "gen-compile::${GEN_S:-45}:$GEN" "gen-default-1::${GEN_S:-45}:$GEN" ${BEST:+"gen-best-1:$BEST:${GEN_S:-45}:$GEN"} \
    "gen-default-2::${GEN_S:-45}:$GEN" ${BEST:+"gen-best-2:$BEST:${GEN_S:-45}:$GEN"} > /dev/null
  grep -H "^generation" $RS/gen-*.log | cut -c1-220
fi
BD1=(bench breakdown --preset phi3v-128k --device cuda --dtype bf16 --prefill 0 --no-image --decode-batches 10 --warmup 0 --runs 1)
if [ $SECONDS -lt ${NCU_UNTIL:-330} ]; then
  env ${BEST:-PHI3V_MMA_LINEAR=16,32,4,3,2} timeout ${NCU_S:-40} $NCU --kernel-name regex:mma_linear_fragments --launch-count 4 $NCU_SECTIONS $B/phi3v "${BD1[@]}" --out $RS/ncu-bd > $RS/ncu-frag.txt 2>&1
  echo "=== ncu fragments rc=$?"; ncu_report $RS/ncu-frag.txt | grep -v "µs$" | grep -E "mma_linear|DRAM|Duration|Registers|Theoretical|Achieved|L1/TEX"
fi
echo "done at $SECONDS s"
cd $R; (cd $OUT && tar czf s30b.tgz s30b && rm -rf s30b)
