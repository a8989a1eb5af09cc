#!/usr/bin/env bash
# Session 37's call: session 36's changes (gpu_s36c.sh, never run: no device was lent; folded in here)
# and session 37's. H100 or H200; a pack with phi3v and phi3v-plugin-conformance of 57ebbd8 or
# later, accfd2b's phi3v as `phi3v-prev`, the kernels test of 37bde82
# (its flash checks only); carry .gpu and .gl. ≤ 560 s.
# The changes:
# - (session 36) the register-fragment flash kernel's keys and values copied into a ring of two
#   64-key steps of shared memory by `cp.async` (switch `mma_attention_copies`, off by default).
#   Prediction: ~130 registers instead of 150–168, 4 cubes per multiprocessor instead of 3;
#   CLIP's attention 229–282 → ~150–190 µs per layer (SDPA 85–91); image encode at num_crops 16
#   −1.5 to −3 ms (17.8–17.9 ms before, H100); prefill 1024 the same or faster;
# - (session 36, in accfd2b, not in be52a1b) CLIP's q/k/v as one product, cuBLASLt's descriptors
#   made once per shape. Prediction: q/k/v 126 → ~100 µs per layer, image encode −0.5 to −1 ms;
# - (session 37, baa5cf3, not in accfd2b) the flash kernels write `[batch, queries, heads,
#   head_dim]` and return its swapped view: the head merge after CLIP's attention (and Phi-3's
#   prefill attention) is a view, no copy. Prediction: −15 to −30 µs per CLIP layer (one pass of
#   ~20 MB read and written less), image encode −0.3 to −0.7 ms;
# - (session 37, 57ebbd8) `PHI3V_CUBLAS_ORDER=queued` queues the cuBLASLt
#   products (bias, residual in the epilogue) for CubeCL's device thread too, once a product of
#   their shape has taken the round trip: the vision tower's four products per layer no longer
#   wait on the device thread (three round trips each, ~45 µs of host time). Prediction: the
#   host's time for the tower −3 to −4 ms (15.4 ms of 17.1 before); image encode the same or up
#   to −0.5 ms now (the GPU sets the pace), more once the attention is faster.
#   1. `bench attention --flash "scores;mma"` (prefill 1024 and 4096 causal, CLIP's 17×16×577×64)
#      with the copies on, then off, in bf16; torch's SDPA at the same shapes;
#   2. image encode at num_crops 16: a compile run, then new with the copies, new without, new
#      with cuBLAS queued, prev (accfd2b) without, in turn, twice (be52a1b's binary is left out:
#      the carry's 64 MiB);
#   3. the fixture parity suite on cuda bf16 (new conformance binary, the defaults: copies off),
#      beside it the kernels test's flash checks (the copies both ways) and three cases with
#      cuBLAS queued (jobs parity-queued-*);
#   then while time is left: 4. prefill 1024, new with the copies on / off alternating twice;
#   5. Nsight Compute of the flash kernel at CLIP's shape with the copies on; 6. the vision tower
#   stage by stage beside the eager peer (copies on).
source scripts/gpu_env.sh
echo "pack of $(head -2 .gpu/commit.txt | tr '\n' ' ')"
timed_folders s37a
cd $D
ON=PHI3V_KERNELS_ON=mma_attention_copies
SHAPES="1,32,1024,1024,96,causal;1,32,4096,4096,96,causal;17,16,577,577,64"
attention_variants $RS "copies:$ON" "default:"
timeout 40 python3 $R/bench/peer_attention.py --dtype bf16 --shapes "$SHAPES" --out $RS/peer-att-bf16.json 2>&1 | tail -5
ENC="--dtype bf16 --scenarios images --images 1344x1344 --num-crops 16 --warmup 2 --runs 10"
P=("enc-compile:$ON:60:$ENC")
for i in 1 2; do P+=("enc-new-copies-$i:$ON:45:$ENC" "enc-new-default-$i::45:$ENC" "enc-new-queued-$i:PHI3V_CUBLAS_ORDER=queued:45:$ENC" "enc-prev-default-$i:PHI3V_BIN=phi3v-prev:45:$ENC"); done
TAIL=1 bench_parts $RS "${P[@]}" > /dev/null
grep -HE "^image" $RS/enc-*.log | sed 's|^[^:]*/||' | cut -c1-230
echo "benches done at $SECONDS s"
# Beside the parity: the kernels test's flash checks (both ways of the copies) on cuda bf16
# (the pack's kernels test must have PHI3V_TEST_KERNEL_CHECKS, 37bde82 or later).
for c in two_images long_context_two_images astronaut_describe; do
  LIMIT=${PARITY_S:-150} job parity-queued-$c env PHI3V_CUBLAS_ORDER=queued $B/phi3v-plugin-conformance --device cuda --parity-only --parity-dtype bf16 --cases $c
done
LIMIT=${KT_S:-240} job kernels-flash env PHI3V_TEST_KERNEL_CHECKS=flash PHI3V_TEST_DEVICES=cuda:0:bf16 $B/kernels kernels_equal --nocapture
# The defaults (copies off): the refactored flash kernel's step, as users run it.
parity_into_rs ${PARITY_S:-150}
wait
echo "=== parity with cuBLAS queued"; for c in $W/parity-queued-*/; do cp $c/out.txt $RS/$(basename $c).txt; cp $c/err.txt $RS/$(basename $c).err; grep -h "^| [a-z]\|rc=" $c/out.txt | cut -c1-250; grep -h "differs\|instead of\|rror\|queued" $c/err.txt | head -4 | cut -c1-250; done
cp $W/kernels-flash/out.txt $RS/kernels-flash.txt; cp $W/kernels-flash/err.txt $RS/kernels-flash.err
echo "=== kernels test (flash checks, cuda bf16) at $SECONDS s"; grep -E "test result|rc=" $W/kernels-flash/out.txt
grep -E "FAIL|problem|mma attention|never|panicked|ran short" $W/kernels-flash/err.txt | head -12 | cut -c1-250
[ $SECONDS -lt ${PRE_UNTIL:-360} ] && {
  PRE="--dtype bf16 --scenarios prefill --prompt-lengths 1024 --prefill-batches 1 --warmup 2 --runs 10"
  alternate $RS pre ${PRE_S:-45} "$PRE" copies "$ON" default ""
}
[ $SECONDS -lt ${NCU_UNTIL:-400} ] && {
  env $ON timeout ${NCU_S:-45} $NCU --kernel-name regex:mma_attention_fragments --launch-skip 2 --launch-count 1 $NCU_SECTIONS \
    $B/phi3v bench attention --device cuda --dtype bf16 --flash mma --shapes "17,16,577,577,64" --warmup 2 --runs 1 > $RS/ncu-copies.txt 2>&1
  echo "=== ncu copies rc=$? at $SECONDS s"; ncu_report $RS/ncu-copies.txt | grep -v "µs$" | head -24
}
export PHI3V_KERNELS_ON=mma_attention_copies
[ $SECONDS -lt ${PBD_UNTIL:-400} ] && PROFILE_STEPS=0 peer_breakdown
echo "done at $SECONDS s"
(cd $OUT && tar czf s37a.tgz s37a && rm -rf s37a)
