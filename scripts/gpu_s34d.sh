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
PROFILE_STEPS=${PROFILE_STEPS:-1500} BD_S=${BD_S:-150} peer_breakdown
cd $D
# (On a machine without NVIDIA's Vulkan this fails at once.)
timeout ${MM_S:-60} $B/phi3v bench matmul --device wgpu --dtype f16 --tilings "burn;specialized:2,4,2:4,2:16,16,16;double:1,8,2:8,1:16,16,16" \
  --shapes "1024,3072,9216" --warmup 2 --runs 10 > $RS/mm-wgpu.log 2>&1
echo "=== matmul wgpu rc=$?"; grep "^|\|refused\|rror" $RS/mm-wgpu.log | head -8 | cut -c1-200
echo "done at $SECONDS s"
(cd $OUT && tar czf s34d.tgz s34d && rm -rf s34d)
