#!/usr/bin/env bash
# Session 37's second call: the flash kernel's copies again, after their fix (132573b: the load
# width read by `N::value()` expanded; in gpu_s37a.sh every launch with the copies panicked,
# "Unexpanded Cube functions should not be called"), then cuBLAS at 10 rows if time is left.
# H100 or H200; a pack with phi3v and the kernels test of 132573b or later; carry .gpu and
# .gl. ≤ 480 s.
# Prediction (session 36's, unchanged): ~130 registers, 4 cubes per multiprocessor; CLIP's
# attention 241.5 (gpu_s37a.sh, the default) → ~150–190 µs per layer (SDPA 86.3); image encode
# at num_crops 16 16.6–16.7 ms (gpu_s37a.sh) −1.5 to −3 ms; prefill 1024 the same or faster.
#   1. `bench attention --flash "scores;mma"` with the copies on, then off (rel. diff against
#      `scores` first: the copies' check);
#   2. image encode, copies on / off alternating twice; 3. prefill 1024 likewise;
#   4. the vision tower stage by stage beside the eager peer, copies on;
#   5. the kernels test's flash checks on cuda bf16 (the copies both ways; ≤ 150 s);
#   6. while time is left: 10 parallel requests, default / cuBLAS at 10 rows
#      (`PHI3V_BLAS_MIN_ROWS=1 PHI3V_SKINNY_MAX_ROWS=0`, gpu_s37b.sh's question), one round.
source scripts/gpu_env.sh
echo "pack of $(head -2 .gpu/commit.txt | tr '\n' ' ')"
timed_folders s37c
cd $D
ON=PHI3V_KERNELS_ON=mma_attention_copies
SHAPES="1,32,1024,1024,96,causal;1,32,4096,4096,96,causal;17,16,577,577,64"
for part in "copies:$ON" "default:"; do
  IFS=: read -r name vars <<< "$part"
  s=$(date +%s)
  env $vars timeout ${ATT_S:-60} $B/phi3v bench attention --device cuda --dtype bf16 --flash "scores;mma" --shapes "$SHAPES" \
    --warmup 3 --runs 20 --out $RS/att-$name.json > $RS/att-$name.log 2>&1
  echo "=== attention $name rc=$? $(( $(date +%s) - s )) s"; grep "^|\|panicked\|refused\|rror" $RS/att-$name.log | sort -u | head -12 | cut -c1-200
done
if grep -q "panicked\|inf |" $RS/att-copies.log; then echo "copies still wrong: no timing of them"; else
  ENC="--dtype bf16 --scenarios images --images 1344x1344 --num-crops 16 --warmup 2 --runs 10"
  alternate $RS enc ${ENC_S:-45} "$ENC" copies "$ON" default ""
  PRE="--dtype bf16 --scenarios prefill --prompt-lengths 1024 --prefill-batches 1 --warmup 2 --runs 10"
  alternate $RS pre ${PRE_S:-45} "$PRE" copies "$ON" default ""
  (export $ON; PROFILE_STEPS=0 peer_breakdown)
fi
echo "benches done at $SECONDS s"
LIMIT=${KT_S:-150} job kernels-flash env PHI3V_TEST_KERNEL_CHECKS=flash PHI3V_TEST_DEVICES=cuda:0:bf16 $B/kernels kernels_equal --nocapture
wait
cp $W/kernels-flash/out.txt $RS/kernels-flash.txt; cp $W/kernels-flash/err.txt $RS/kernels-flash.err
echo "=== kernels test (flash checks, cuda bf16) at $SECONDS s"; grep -E "test result|rc=" $W/kernels-flash/out.txt
grep -E "FAIL|problem|mma attention|never|panicked|ran short" $W/kernels-flash/err.txt | head -12 | cut -c1-250
[ $SECONDS -lt ${GEN10_UNTIL:-280} ] && {
  GEN10="--scenarios generation --shapes 1024x128 --warmup 1 --runs 8 --generation-runs 1 --batching engine --parallel 10"
  alternate $RS gen10 ${GEN10_S:-50} "$GEN10" default "" blas "PHI3V_BLAS_MIN_ROWS=1 PHI3V_SKINNY_MAX_ROWS=0" 1
}
echo "done at $SECONDS s"
(cd $OUT && tar czf s37c.tgz s37c && rm -rf s37c)
