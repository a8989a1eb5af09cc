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
grep -H "^image" $RS/enc-*.log | sed 's|^.*/s35a/||' | cut -c1-200
PRE="--dtype bf16 --scenarios prefill --prompt-lengths 1024 --prefill-batches 1 --warmup 2 --runs 10"
alternate $RS pre ${PRE_S:-45} "$PRE" on "" off "PHI3V_KERNELS_OFF=blas_epilogue"
grep -H "^prefill" $RS/pre-*.log | sed 's|^.*/s35a/||' | cut -c1-200
echo "benches done at $SECONDS s"
cd $R
LIMIT=${PARITY_S:-180} parity_dtype bf16 $(fixture_cases)
collect; cp /tmp/res/parity-* $RS/ 2>/dev/null
echo "parity done at $SECONDS s"
if [ "${PBD_S:-90}" != 0 ]; then
  cd $D
  s=$(date +%s)
  timeout ${PBD_S:-90} python3 $R/bench/peer_kernels.py --preset $R/cli/presets/phi3v-128k.json --decode-batches 1 --prefill 0 \
    --image-grid 4x4 --warmup 2 --runs 10 --out $RS/peer_bd.json 2>&1 | grep -v Warning | tail -3
  echo "=== peer breakdown $(( $(date +%s) - s )) s"
  PEER=(); [ -s $RS/peer_bd.json ] && PEER=(--peer $RS/peer_bd.json)
  s=$(date +%s)
  # PROFILE_STEPS=0: no host profile (a phi3v built without `profile`).
  PROF=(); [ "${PROFILE_STEPS:-1500}" != 0 ] && PROF=(--profile $RS/profile --profile-steps ${PROFILE_STEPS:-1500})
  timeout ${BD_S:-120} $B/phi3v bench breakdown --preset phi3v-128k --device cuda --dtype bf16 --decode-batches 1 --prefill 0 \
    --image-grid 4x4 --warmup 3 --runs 20 "${PROF[@]}" "${PEER[@]}" --out $RS/bd > $RS/bd.log 2>&1
  echo "=== breakdown rc=$? $(( $(date +%s) - s )) s"
  grep -E "^\| vision|^\| [a-z]|Sum of|Host" $RS/bd/breakdown.md 2>/dev/null | cut -c1-160 | head -50
  for f in $RS/profile/*.top.md; do echo "=== $(basename $f)"; head -30 "$f" | cut -c1-200; done
fi
echo "done at $SECONDS s"
(cd $OUT && tar czf s35a.tgz s35a && rm -rf s35a)
