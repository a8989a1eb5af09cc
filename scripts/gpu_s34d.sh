#!/usr/bin/env bash
# Session 34, call 4 (H100 or H200; a pack of 9098165 or later whose phi3v is built with
# `profile` and its symbol table; carry .gpu and .gl). ≤ 420 s.
#   1. the fixture parity suite on cuda bf16 with the session's final code;
#   2. where a step's time goes: `bench breakdown` bf16, decode b=1 and the vision tower
#      (4x4 grid) stage by stage beside the eager peer (bench/peer_kernels.py, same call), with
#      the host sampled over 1500 b=1 steps (the b=1 step is host-bound, and session 34 found
#      the memory pool's reservations are not the cause);
#   3. where the H100's Vulkan is there: `bench matmul` on wgpu f16 at cubek's `specialized`
#      routine, whose outputs now are checked on rows whose right answer no reused buffer holds
#      (session 34's sweep took its 50 µs "products" for real).
source scripts/gpu_env.sh
echo "pack of $(head -1 .gpu/commit.txt)"
mkdir -p $OUT/s34d
# PARITY=0 skips it (a pack whose phi3v-plugin-conformance predates the final code).
if [ "${PARITY:-1}" = 1 ]; then
  LIMIT=${PARITY_S:-200} parity_dtype bf16 $(fixture_cases)
  collect; cp /tmp/res/parity-* $OUT/s34d/ 2>/dev/null
fi
timed_folders s34d
cd $D
s=$(date +%s)
timeout ${PBD_S:-90} python3 $R/bench/peer_kernels.py --preset $R/cli/presets/phi3v-128k.json --decode-batches 1 --prefill 0 \
  --image-grid 4x4 --warmup 2 --runs 10 --out $RS/peer_bd.json 2>&1 | grep -v Warning | tail -3
echo "=== peer breakdown $(( $(date +%s) - s )) s"
PEER=(); [ -s $RS/peer_bd.json ] && PEER=(--peer $RS/peer_bd.json)
s=$(date +%s)
timeout ${BD_S:-150} $B/phi3v bench breakdown --preset phi3v-128k --device cuda --dtype bf16 --decode-batches 1 --prefill 0 \
  --image-grid 4x4 --warmup 3 --runs 20 --profile $RS/profile --profile-steps ${PROFILE_STEPS:-1500} "${PEER[@]}" --out $RS/bd > $RS/bd.log 2>&1
echo "=== breakdown rc=$? $(( $(date +%s) - s )) s"
grep -E "^\| vision|^\| [a-z]|Sum of|Host" $RS/bd/breakdown.md 2>/dev/null | cut -c1-160 | head -50
for f in $RS/profile/*.top.md; do echo "=== $(basename $f)"; head -40 "$f" | cut -c1-200; done
# (On a machine without NVIDIA's Vulkan this fails at once.)
timeout ${MM_S:-60} $B/phi3v bench matmul --device wgpu --dtype f16 --tilings "burn;specialized:2,4,2:4,2:16,16,16;double:1,8,2:8,1:16,16,16" \
  --shapes "1024,3072,9216" --warmup 2 --runs 10 > $RS/mm-wgpu.log 2>&1
echo "=== matmul wgpu rc=$?"; grep "^|\|refused\|rror" $RS/mm-wgpu.log | head -8 | cut -c1-200
echo "done at $SECONDS s"
(cd $OUT && tar czf s34d.tgz s34d && rm -rf s34d)
