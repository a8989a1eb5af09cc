#!/usr/bin/env bash
# Session 29, call 2 (H100 or H200; a pack of 2ddd928 in .gpu: phi3v and the kernels test only;
# carry .gpu and .gl). ≤ 420 s, bf16, phi3v-128k shapes, one timed process at a time:
#   1. tests on cuda bf16 and f16 side by side: the tensor-core products (the copied product
#      now keeps its cubes) and the decode attention variants (rows copied, in vectors, one
#      value per lane);
#   2. the decode breakdown at 10 rows: the default; the copied product in five shapes; the
#      copied decode attention (`decode_attention_copies` on);
#   3. generation 1024 → 128 through the engine, 10 parallel requests (8 runs): the default,
#      the fastest copied product, and that with the copied attention; batch 1 default;
#   4. Nsight Compute: the first four copied products and two copied decode attentions.
source scripts/gpu_env.sh
timed_folders s29b
cd $R
for dt in bf16 f16; do
  LIMIT=${TEST_S:-200} job mma-$dt env PHI3V_TEST_DEVICES=cuda:0:$dt $B/kernels tensor_core --nocapture
  LIMIT=${TEST_S:-200} job dec-$dt env PHI3V_TEST_DEVICES=cuda:0:$dt $B/kernels decode_attention_variants --nocapture
done
wait; collect; cp /tmp/res/mma-* /tmp/res/dec-* $RS/ 2>/dev/null
for n in mma-bf16 mma-f16 dec-bf16 dec-f16; do echo "=== $n"
  grep -hE "tensor-core products|launches read vectors|test result|panicked|rc=|FAIL|\[10, 3072\] · \[3072, 1024\], epilogue 2, CopyAsync|1024 keys, 96\], copies|lengths \[1024, 700, 33\]\], copies" $W/$n/out.txt $W/$n/err.txt | cut -c1-220 | head -12
  grep -q "test result: ok" $W/$n/out.txt || grep -v "^\s*$" $W/$n/err.txt | grep -v "mma_linear \[\|decode_attention \[\|s  " | tail -8 | cut -c1-300; done
echo "tests done at $SECONDS s"
cd $D
VARIANTS=("reg1:" "cp2:PHI3V_MMA_LINEAR=8,64,4,2,2" "p4cp3:PHI3V_MMA_LINEAR=4,64,4,2,3" "p4cp2:PHI3V_MMA_LINEAR=4,64,4,2,2"
  "p2cp3:PHI3V_MMA_LINEAR=2,64,4,2,3" "c128cp2:PHI3V_MMA_LINEAR=8,128,4,2,2" "attcp:PHI3V_KERNELS_ON=decode_attention_copies")
BD_S=${BD_S:-45} breakdown_variants ${BD_UNTIL:-300} "${VARIANTS[@]}"
# The four projections' µs per call (third column) summed, per variant; the fastest copied one.
BEST=$(python3 $R/bench/breakdown_projections.py "$RS" "${VARIANTS[@]}")
echo "fastest copied: ${BEST:-none}"
GEN="--scenarios generation --shapes 1024x128 --warmup 1 --runs 8 --generation-runs 1 --batching engine"
if [ $SECONDS -lt ${GEN_UNTIL:-330} ]; then
  TAIL=2 bench_parts $RS "gen-default::${GEN_S:-50}:$GEN --parallel 10" ${BEST:+"gen-best:$BEST:${GEN_S:-40}:$GEN --parallel 10"} \
    ${BEST:+"gen-best-attcp:$BEST PHI3V_KERNELS_ON=decode_attention_copies:${GEN_S:-40}:$GEN --parallel 10"} "gen-b1::${GEN_S:-40}:$GEN --parallel 1"
  grep -H "^generation" $RS/gen-*.log | cut -c1-220
fi
BD1=(bench breakdown --preset phi3v-128k --device cuda --dtype bf16 --prefill 0 --no-image --decode-batches 10 --warmup 0 --runs 1)
for part in "cp:mma_linear_async:4:${BEST:-PHI3V_MMA_LINEAR=8,64,4,2,2}" "attcp:decode_attention_copies:2:PHI3V_KERNELS_ON=decode_attention_copies"; do
  IFS=: read -r name kernel count vars <<< "$part"
  [ $SECONDS -gt ${NCU_UNTIL:-400} ] && { echo "=== ncu $name: no time left ($SECONDS s)"; continue; }
  env $vars timeout ${NCU_S:-40} $NCU --kernel-name regex:$kernel --launch-count $count $NCU_SECTIONS $B/phi3v "${BD1[@]}" --out $RS/ncu-bd-$name > $RS/ncu-$name.txt 2>&1
  echo "=== ncu $name rc=$?"; ncu_report $RS/ncu-$name.txt | grep -v "µs$"
done
echo "done at $SECONDS s"
cd $R; (cd $OUT && tar czf s29b.tgz s29b && rm -rf s29b)
