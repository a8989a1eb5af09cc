#!/usr/bin/env bash
# The next call after session 37 (written in session 37, not yet run): H100 or H200; a pack
# with phi3v and phi3v-plugin-conformance of 132573b or later and the kernels test of 132573b
# or later (build it: `cargo test --release … --no-run --test kernels`, docs/notes.md); carry
# .gpu and .gl. ≤ 480 s.
#   1. the kernels test's flash checks on cuda bf16 (`PHI3V_TEST_KERNEL_CHECKS=flash`: every
#      flash case with `mma_attention_copies` both ways; ≤ 150 s). If they pass, the copies can
#      leave `KERNELS_OFF_BY_DEFAULT` (session 37: right at three shapes and `two_images`,
#      −2.5 % at CLIP's shape, −7 / −13.5 % on the prefill's attention at 1024 / 4096);
#   2. Nsight Compute of the register-fragment flash kernel at CLIP's 17×16×577×64, copies off
#      then on: registers, theoretical and achieved occupancy, stall reasons. CLIP's attention
#      is 2.7× SDPA's (230.9–236.7 against 86.3 µs) and freeing the prefetch's registers gained
#      2.5 %: the next change should follow what this says, not the occupancy guess;
#   3. the whole kernels test on cuda bf16 (≤ 240 s; the queued cuBLASLt check of 57ebbd8 has
#      not run on CUDA) while time is left;
#   4. then scripts/gpu_s37b.sh's question (cuBLAS for the 10-row decode products) if time is
#      left: one round of 10 parallel requests, default / cuBLAS.
source scripts/gpu_env.sh
echo "pack of $(head -2 .gpu/commit.txt | tr '\n' ' ')"
timed_folders s38a
cd $D
ON=PHI3V_KERNELS_ON=mma_attention_copies
LIMIT=${KT_S:-150} job kernels-flash env PHI3V_TEST_KERNEL_CHECKS=flash PHI3V_TEST_DEVICES=cuda:0:bf16 $B/kernels kernels_equal --nocapture
wait
cp $W/kernels-flash/out.txt $RS/kernels-flash.txt; cp $W/kernels-flash/err.txt $RS/kernels-flash.err
echo "=== kernels test (flash checks, cuda bf16) at $SECONDS s"; grep -E "test result|rc=" $W/kernels-flash/out.txt
grep -E "FAIL|problem|mma attention|never|panicked|ran short" $W/kernels-flash/err.txt | head -12 | cut -c1-250
for part in "default:" "copies:$ON"; do
  IFS=: read -r name vars <<< "$part"
  env $vars timeout ${NCU_S:-45} $NCU --kernel-name regex:mma_attention_fragments --launch-skip 2 --launch-count 1 $NCU_SECTIONS \
    $B/phi3v bench attention --device cuda --dtype bf16 --flash mma --shapes "17,16,577,577,64" --warmup 2 --runs 1 > $RS/ncu-$name.txt 2>&1
  echo "=== ncu $name rc=$? at $SECONDS s"; ncu_report $RS/ncu-$name.txt | grep -v "µs$" | head -24
done
[ $SECONDS -lt ${KT_UNTIL:-200} ] && {
  LIMIT=${KT_ALL_S:-240} job kernels-all env PHI3V_TEST_DEVICES=cuda:0:bf16 $B/kernels kernels_equal --nocapture
  wait
  cp $W/kernels-all/out.txt $RS/kernels-all.txt; cp $W/kernels-all/err.txt $RS/kernels-all.err
  echo "=== kernels test (whole, cuda bf16) at $SECONDS s"; grep -E "test result|rc=" $W/kernels-all/out.txt
  grep -E "FAIL|problem|never|panicked|ran short|queued" $W/kernels-all/err.txt | head -12 | cut -c1-250
}
[ $SECONDS -lt ${GEN10_UNTIL:-300} ] && {
  alternate $RS gen10 ${GEN10_S:-50} "$(gen_args 10)" default "" blas "$BLAS_DECODE" 1
}
echo "done at $SECONDS s"
(cd $OUT && tar czf s38a.tgz s38a && rm -rf s38a)
