#!/usr/bin/env bash
# Session 34, call 1 (H100 only: wgpu needs the H100 image's Vulkan; a pack whose phi3v is built
# with feature `vulkan`; carry .gpu and .gl). ≤ 560 s. Session 33 found Burn's autotuned matmul
# on wgpu f16 with SPIR-V at 70–124 TFLOP/s (CUDA's products ~400): the wgpu prefill (99 ms,
# 0.185 of CUDA) and image encode (99 ms, 0.21) are bound by it. This call sweeps
# cubek-matmul's cooperative-matrix routines over session 17's tilings at the prefill's
# `qkv_proj` and CLIP's `fc1` on wgpu f16, times the best 3 at the model's prefill and CLIP
# products, then runs prefill 1024 and the encode with Burn's matmul and with the best tiling
# (PHI3V_MATMUL). Replaces gpu_s33e.sh (its tilings are among the sweep's).
ROWS=many DEVICE=wgpu DTYPE=f16 KERNELS=0 ROUTINES="${ROUTINES:-double ordered specialized}" \
  SWEEP_PRODUCTS="${SWEEP_PRODUCTS:-1024,3072,9216 9809,1024,4096}" WARM_S=${WARM_S:-45} ROUTINE_S=${ROUTINE_S:-25} \
  TOP=3 TOP_S=${TOP_S:-100} TOP_SHAPES="1024,3072,9216;1024,3072,3072;1024,3072,16384;1024,8192,3072;9809,1024,1024;9809,1024,4096;9809,4096,1024" \
  E2E_S=${E2E_S:-100} bash scripts/gpu_s17_matmul.sh
# The flash kernels on wgpu's cooperative matrices (Auto takes `scores` there): the staged
# `cmma` kernel (`mma`) against `scores` at CLIP's shape and prefill 1024's, f16.
source scripts/gpu_env.sh
RS=$OUT/s34a-att; mkdir -p $RS; cd $W/bench 2>/dev/null || cd $W
timeout ${ATT_S:-90} $B/phi3v bench attention --device wgpu --dtype f16 --flash "scores;mma;auto" --shapes "17,16,577,577,64;1,32,1024,1024,96,causal" \
  --warmup 2 --runs 10 --out $RS/att.json > $RS/att.log 2>&1
echo "=== attention wgpu f16 rc=$?"; grep "^|\|panicked\|refused\|rror" $RS/att.log | sort -u | head -12 | cut -c1-200
(cd $OUT && tar czf s34a-att.tgz s34a-att && rm -rf s34a-att)
