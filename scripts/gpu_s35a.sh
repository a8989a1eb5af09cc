#!/usr/bin/env bash
# Session 35, call 1 (H100 or H200; a pack whose phi3v has the `blas_epilogue` switch (built with
# `profile` and its symbol table, else PROFILE_STEPS=0) and whose phi3v-plugin-conformance has
# the same model code; carry .gpu and .gl). ≤ 560 s.
# The change: the bias of CLIP's q/k/v/out_proj/fc2 and the residual after out_proj and fc2 (and
# after Phi-3's o_proj and down_proj at prefill) added in cuBLASLt's epilogue (`blas_epilogue`,
# on; off = cuBLAS's product, then a pass of its own per term, as before). Per CLIP layer ~320 MB
# less traffic and 7 fewer launches. Prediction: image encode at num_crops 16 −1.5 to −2.6 ms
# (19.3–19.5 ms before, H100); prefill 1024 unchanged or faster.
#   1. `bench matmul --epilogue` at CLIP's and Phi-3's prefill shapes: cuBLAS then two adds
#      (`blas`) against the epilogue (`model`), the outputs compared;
#   2. image encode: a run that compiles, then on / off alternating twice;
#   3. prefill 1024: the same;
#   4. the fixture parity suite on cuda bf16;
#   5. what session 34's last call was to measure (PBD_S=0 skips it): the vision tower's stages
#      beside the eager peer, and b=1 decode steps with the host sampled (PROFILE_STEPS).
source scripts/gpu_env.sh
echo "pack of $(head -2 .gpu/commit.txt | tr '\n' ' ')"
timed_folders s35a
cd $D
s=$(date +%s)
timeout ${MM_S:-90} $B/phi3v bench matmul --device cuda --dtype bf16 --epilogue --tilings "blas;model" \
  --shapes "9809,1024,1024;9809,4096,1024;1024,3072,3072;1024,8192,3072" --warmup 3 --runs 20 > $RS/mm-epilogue.log 2>&1
echo "=== matmul --epilogue rc=$? $(( $(date +%s) - s )) s"; grep "^|\|refused\|panicked" $RS/mm-epilogue.log | cut -c1-200
ENC="--dtype bf16 --scenarios images --images 1344x1344 --num-crops 16 --warmup 2 --runs 10"
alternate $RS enc ${ENC_S:-60} "$ENC" on "" off "PHI3V_KERNELS_OFF=blas_epilogue"
PRE="--dtype bf16 --scenarios prefill --prompt-lengths 1024 --prefill-batches 1 --warmup 2 --runs 10"
alternate $RS pre ${PRE_S:-45} "$PRE" on "" off "PHI3V_KERNELS_OFF=blas_epilogue"
echo "benches done at $SECONDS s"
parity_into_rs 180
[ "${PBD_S:-90}" != 0 ] && peer_breakdown
echo "done at $SECONDS s"
(cd $OUT && tar czf s35a.tgz s35a && rm -rf s35a)
