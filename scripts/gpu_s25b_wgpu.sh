#!/usr/bin/env bash
# Written in session 24: issue 10's "wgpu on the same GPU at ≥ 50 % of the CUDA path", never
# measured on the real shapes. Needs the H100 kind (`kind: nvidia-h100-x1`: wgpu needs NVIDIA's
# Vulkan driver; the loader comes from .gl), the full pack in .gpu; carry both. ~420 s.
# `phi3v bench run` on the phi3v-128k shapes, one process per device and dtype, one after the
# other on the quiet GPU: wgpu f16 (Vulkan has no bf16 arithmetic), then cuda f16 (the same
# dtype) and cuda bf16 (the default). Points: prefill 1024, batch-1 decode 1024 → 32, the image
# encode at num_crops 16. The first part also compiles wgpu's kernels (SPIR-V through the
# driver) and tunes its matmuls, hence its longer limit (WGPU_S).
source scripts/gpu_env.sh
timed_folders s25b
cd $D
PTS="--scenarios prefill,latency,images --prompt-lengths 1024 --prefill-batches 1 --latency-shape 1024x32 --images 1344x1344 --num-crops 16 --warmup 1 --runs 3"
for part in "wgpu-f16:wgpu:f16:${WGPU_S:-220}" "cuda-f16:cuda:f16:${CUDA_S:-90}" "cuda-bf16:cuda:bf16:${CUDA_S:-90}"; do
  IFS=: read -r name dev dt secs <<< "$part"; s=$(date +%s)
  timeout "$secs" $B/phi3v bench run --preset phi3v-128k --device $dev --dtype $dt $PTS --out "$RS/$name" > "$RS/$name.log" 2>&1
  echo "=== $name rc=$? $(( $(date +%s) - s )) s"; grep -E "^prefill|^latency|^image|error|failed" "$RS/$name.log" | cut -c1-200
done
cd $R
(cd $OUT && tar czf s25b.tgz s25b && rm -rf s25b)
