#!/usr/bin/env bash
# Session 29, call 1 (H100 or H200; the pack of 301892a in .gpu; carry .gpu and .gl). ≤ 580 s,
# bf16, phi3v-128k shapes, one timed process at a time on the quiet GPU:
#   1. the tensor-core products test on cuda bf16 and f16 side by side: registers (1, 2, 4
#      chunks ahead), weights from global memory, and the new asynchronous copies (rings of 2
#      and 4 chunks), with the count of copied products;
#   2. the decode breakdown at 10 rows: the default (registers, depth 1) and asynchronous
#      copies with 8 or 4 planes, chunks of 64 or 128, 1 to 4 chunks in flight;
#   3. (time left) generation 1024 → 128, 10 parallel requests through the engine: the default
#      and the fastest copied shape of step 2;
#   4. (time left) Nsight Compute: the first four copied products at 10 rows.
source scripts/gpu_env.sh
timed_folders s29a
cd $R
for dt in bf16 f16; do
  LIMIT=${TEST_S:-250} job mma-$dt env PHI3V_TEST_DEVICES=cuda:0:$dt $B/kernels tensor_core --nocapture
done
wait; collect; cp /tmp/res/mma-* $RS/ 2>/dev/null
for n in mma-bf16 mma-f16; do echo "=== $n"
  grep -hE "tensor-core products|test result|panicked|rc=|FAIL|\[10, 3072\] · \[3072, 1024\], epilogue 2" $W/$n/out.txt $W/$n/err.txt | cut -c1-220 | head -14
  grep -q "test result: ok" $W/$n/out.txt || grep -v "^\s*$" $W/$n/err.txt | grep -v "mma_linear \[\|s  " | tail -8 | cut -c1-300; done
echo "tests done at $SECONDS s"
cd $D
VARIANTS=("reg1:" "cp1:PHI3V_MMA_LINEAR=8,64,4,2,1" "cp2:PHI3V_MMA_LINEAR=8,64,4,2,2" "cp3:PHI3V_MMA_LINEAR=8,64,4,2,3"
  "cp4:PHI3V_MMA_LINEAR=8,64,4,2,4" "p4cp3:PHI3V_MMA_LINEAR=4,64,4,2,3" "c128cp2:PHI3V_MMA_LINEAR=8,128,4,2,2" "p4c128cp3:PHI3V_MMA_LINEAR=4,128,4,2,3")
BD_S=${BD_S:-45} breakdown_variants ${BD_UNTIL:-470} "${VARIANTS[@]}"
# The four projections' µs per call (third column) summed, per variant; the fastest copied one.
BEST=$(python3 $R/bench/breakdown_projections.py "$RS" "${VARIANTS[@]}")
echo "fastest copied: ${BEST:-none}"
GEN="--scenarios generation --shapes 1024x128 --warmup 1 --runs 4 --generation-runs 1 --batching engine --parallel 10"
if [ $SECONDS -lt ${GEN_UNTIL:-430} ]; then
  TAIL=3 bench_parts $RS "gen-default::${GEN_S:-55}:$GEN" ${BEST:+"gen-best:$BEST:${GEN_S:-55}:$GEN"}
  grep -H "^generation" $RS/gen-*.log | cut -c1-220
fi
BD1=(bench breakdown --preset phi3v-128k --device cuda --dtype bf16 --prefill 0 --no-image --decode-batches 10 --warmup 0 --runs 1)
if [ $SECONDS -lt ${NCU_UNTIL:-530} ]; then
  env ${BEST:-PHI3V_MMA_LINEAR=8,64,4,2,2} timeout ${NCU_S:-45} $NCU --kernel-name regex:mma_linear_async --launch-count 4 $NCU_SECTIONS $B/phi3v "${BD1[@]}" --out $RS/ncu-bd-cp > $RS/ncu-cp.txt 2>&1
  echo "=== ncu copied rc=$?"; ncu_report $RS/ncu-cp.txt
fi
echo "done at $SECONDS s"
cd $R; (cd $OUT && tar czf s29a.tgz s29a && rm -rf s29a)
