#!/usr/bin/env bash
# Session 30, call 1 (H100 or H200; a pack of phi3v and the kernels test in .gpu; carry .gpu
# and .gl). ≤ 560 s, bf16, phi3v-128k shapes, one timed process at a time:
#   1. the tensor-core products' test on cuda bf16 and f16 side by side, register fragments
#      only (`PHI3V_TEST_MMA_READS=3`: 3 depths × 11 cases, 2 runs each);
#   2. the decode breakdown at 10 rows: the default (registers) and the register fragments in
#      five shapes (planes, columns, depth);
#   3. generation 1024 → 128 through the engine, 10 parallel requests (8 runs): the default,
#      then the fastest fragments shape, then the default again;
#   4. the decode breakdown at 1 row: the default (CUDA-core skinny product, norm fused) and the
#      fragments from one row (`min_rows` 1: the norm then runs as its own kernel);
#   5. Nsight Compute on the fastest fragments shape's first four products.
source scripts/gpu_env.sh
timed_folders s30a
cd $R
for dt in bf16 f16; do
  LIMIT=${TEST_S:-150} job mma-$dt env PHI3V_TEST_DEVICES=cuda:0:$dt PHI3V_TEST_MMA_READS=3 $B/kernels tensor_core --nocapture
done
wait; collect; cp /tmp/res/mma-* $RS/ 2>/dev/null
for n in mma-bf16 mma-f16; do echo "=== $n"
  grep -hE "tensor-core products|test result|panicked|rc=|FAIL|\[10, 96\] · \[96, 17408\]|\[6, 128\] · \[128, 16896\]" $W/$n/out.txt $W/$n/err.txt | cut -c1-230 | head -14
  grep -q "test result: ok" $W/$n/out.txt || grep -v "^\s*$" $W/$n/err.txt | grep -v "mma_linear \[\|s  " | tail -8 | cut -c1-300; done
echo "tests done at $SECONDS s"
cd $D
VARIANTS=("reg1:" "f8c32d2:PHI3V_MMA_LINEAR=8,32,4,3,2" "f8c64d1:PHI3V_MMA_LINEAR=8,64,4,3,1" "f4c32d4:PHI3V_MMA_LINEAR=4,32,4,3,4"
  "f16c32d2:PHI3V_MMA_LINEAR=16,32,4,3,2" "f8c16d4:PHI3V_MMA_LINEAR=8,16,4,3,4")
BD_S=${BD_S:-35} breakdown_variants ${BD_UNTIL:-300} "${VARIANTS[@]}"
BEST=$(python3 $R/bench/breakdown_projections.py "$RS" "${VARIANTS[@]}")
echo "fastest fragments: ${BEST:-none} at $SECONDS s"
GEN="--scenarios generation --shapes 1024x128 --warmup 1 --runs 8 --generation-runs 1 --batching engine --parallel 10"
if [ $SECONDS -lt ${GEN_UNTIL:-330} ]; then
  TAIL=2 bench_parts $RS "gen-default-1::${GEN_S:-45}:$GEN" ${BEST:+"gen-best:$BEST:${GEN_S:-45}:$GEN"} "gen-default-2::${GEN_S:-45}:$GEN"
  grep -H "^generation" $RS/gen-*.log | cut -c1-220
fi
for part in "b1-default:" "b1-frag:${BEST:-PHI3V_MMA_LINEAR=8,32,4,3,2}"; do
  IFS=: read -r name vars <<< "$part"
  # One row: the fastest shape's planes and columns with min_rows 1 (its reads and depth again).
  [ -n "$vars" ] && vars=$(echo "$vars" | awk -F'[=,]' '{print $1"="$2","$3",1,3,"$6}')
  [ $SECONDS -gt ${B1_UNTIL:-470} ] && { echo "=== breakdown $name: no time left ($SECONDS s)"; continue; }
  env $vars timeout ${BD_S:-35} $B/phi3v bench breakdown --preset phi3v-128k --device cuda --dtype bf16 --prefill 0 --no-image \
    --warmup 3 --runs 20 --decode-batches 1 --out $RS/bd-$name > $RS/bd-$name.log 2>&1
  echo "=== breakdown $name (${vars:-defaults}) rc=$? at $SECONDS s"
  grep -E "proj|attention \||whole|norm" $RS/bd-$name/breakdown.md 2>/dev/null | grep -v "^# " | cut -c1-110 | head -9
  grep -E "panicked|rror" $RS/bd-$name.log | head -2 | cut -c1-200
done
BD1=(bench breakdown --preset phi3v-128k --device cuda --dtype bf16 --prefill 0 --no-image --decode-batches 10 --warmup 0 --runs 1)
if [ $SECONDS -lt ${NCU_UNTIL:-500} ]; then
  env ${BEST:-PHI3V_MMA_LINEAR=8,32,4,3,2} timeout ${NCU_S:-40} $NCU --kernel-name regex:mma_linear_fragments --launch-count 4 $NCU_SECTIONS $B/phi3v "${BD1[@]}" --out $RS/ncu-bd > $RS/ncu-frag.txt 2>&1
  echo "=== ncu fragments rc=$?"; ncu_report $RS/ncu-frag.txt | grep -v "µs$"
fi
echo "done at $SECONDS s"
cd $R; (cd $OUT && tar czf s30a.tgz s30a && rm -rf s30a)
