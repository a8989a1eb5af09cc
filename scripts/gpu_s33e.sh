#!/usr/bin/env bash
# Session 33, call 6 (H100 only: wgpu needs the H100 image's Vulkan; a pack with phi3v built with
# feature `vulkan`; carry .gpu and .gl). ≤ 240 s. Call 2 found Burn's autotuned matmul on wgpu
# f16 with SPIR-V at 70–124 TFLOP/s (CUDA's products ~400): the wgpu prefill and encode are
# bound by it. This call times cubek-matmul's routines at a few tilings on wgpu f16 against
# Burn's choice, at the prefill's `qkv_proj` and `down_proj` and CLIP's `fc1` (TMA routines
# are CUDA-only and left out).
source scripts/gpu_env.sh
echo "pack of $(head -1 .gpu/commit.txt)"
timed_folders s33e
cd $D
TIL="burn;simple:4,4,2:2,2;simple:2,8,2:4,1;double:4,4,2:2,2;double:2,8,2:4,1;double-mma:4,4,2:2,2;ordered:4,4,2:2,2;specialized:4,4,2:2,2;specialized:2,8,2:4,1"
timeout ${MM_S:-200} $B/phi3v bench matmul --device wgpu --dtype f16 --tilings "$TIL" --shapes "1024,3072,9216;1024,8192,3072;9809,1024,4096" \
  --warmup 2 --runs 10 --out $RS/mm-wgpu-tilings.json > $RS/mm-wgpu-tilings.log 2>&1
echo "=== matmul wgpu f16 tilings rc=$? at $SECONDS s"; grep "^|\|rror\|panicked\|refused" $RS/mm-wgpu-tilings.log | head -40 | cut -c1-200
echo "done at $SECONDS s"
(cd $OUT && tar czf s33e.tgz s33e && rm -rf s33e)
