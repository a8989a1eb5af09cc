#!/usr/bin/env bash
# Session 37's second call: the flash kernel's copies again, after their fix (132573b: the load
# width read by `N::value()` expanded; in gpu_s37a.sh every launch with the copies panicked,
# "Unexpanded Cube functions should not be called"), then cuBLAS at 10 rows if time is left.
# H100 or H200; a pack with phi3v and phi3v-plugin-conformance of 132573b or later; carry
# .gpu and .gl. ≤ 480 s; at least ~150 s with `ENC_ROUNDS=1 BD=0 PRE_UNTIL=0 GEN10_UNTIL=0
# PARITY_CASES=two_images`.
# Prediction (session 36's, unchanged): ~130 registers, 4 cubes per multiprocessor; CLIP's
# attention 241.5 (gpu_s37a.sh, the default) → ~150–190 µs per layer (SDPA 86.3); image encode
# at num_crops 16 16.6–16.7 ms (gpu_s37a.sh) −1.5 to −3 ms; prefill 1024 the same or faster.
#   1. `bench attention --flash "scores;mma"` with the copies on, then off (rel. diff against
#      `scores` first: the copies' check);
#   2. image encode, copies on / off alternating twice; 3. the vision tower stage by stage
#   beside the eager peer, copies on; 4. prefill 1024 like the encode (PRE_UNTIL);
#   5. three fixture cases on cuda bf16 with the copies on (≤ 150 s; the kernels test's binary
#      of 132573b was not built in time);
#   6. while time is left: 10 parallel requests, default / cuBLAS at 10 rows
#      (`PHI3V_BLAS_MIN_ROWS=1 PHI3V_SKINNY_MAX_ROWS=0`, gpu_s37b.sh's question), one round.
source scripts/gpu_env.sh
echo "pack of $(head -2 .gpu/commit.txt | tr '\n' ' ')"
timed_folders s37c
cd $D
ON=PHI3V_KERNELS_ON=mma_attention_copies
attention_variants $RS "copies:$ON" "default:"
if grep -q "panicked\|inf |" $RS/att-copies.log; then echo "copies still wrong: no timing of them"; else
  ENC="--dtype bf16 --scenarios images --images 1344x1344 --num-crops 16 --warmup 2 --runs 10"
  alternate $RS enc ${ENC_S:-45} "$ENC" copies "$ON" default "" ${ENC_ROUNDS:-2}
  [ "${BD:-1}" != 0 ] && (export $ON; PROFILE_STEPS=0 peer_breakdown)
  [ $SECONDS -lt ${PRE_UNTIL:-400} ] && {
    PRE="--dtype bf16 --scenarios prefill --prompt-lengths 1024 --prefill-batches 1 --warmup 2 --runs 10"
    alternate $RS pre ${PRE_S:-45} "$PRE" copies "$ON" default ""
  }
fi
echo "benches done at $SECONDS s"
for c in ${PARITY_CASES:-two_images long_context_two_images astronaut_describe}; do
  LIMIT=${PARITY_S:-150} job parity-copies-$c env $ON $B/phi3v-plugin-conformance --device cuda --parity-only --parity-dtype bf16 --cases $c
done
wait
echo "=== parity with the copies on at $SECONDS s"; for c in $W/parity-copies-*/; do cp $c/out.txt $RS/$(basename $c).txt; cp $c/err.txt $RS/$(basename $c).err; grep -h "^| [a-z]\|rc=" $c/out.txt | cut -c1-250; grep -h "differs\|instead of\|rror\|panicked" $c/err.txt | head -4 | cut -c1-250; done
[ $SECONDS -lt ${GEN10_UNTIL:-280} ] && {
  alternate $RS gen10 ${GEN10_S:-50} "$(gen_args 10)" default "" blas "$BLAS_DECODE" 1
}
echo "done at $SECONDS s"
(cd $OUT && tar czf s37c.tgz s37c && rm -rf s37c)
