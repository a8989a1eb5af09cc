#!/usr/bin/env bash
# Session 26, call 2: needs the H100 kind (`kind: nvidia-h100-x1`; wgpu needs NVIDIA's Vulkan
# driver, which the H200 image lacks), the full pack in .gpu and .gl; carry both. ~540 s, one
# process at a time on the quiet GPU:
#   1. issue 8's sweep on the H100: generation 1024 → 128 at 1, 10, 64, 128, 256 parallel
#      requests, the engine then static batching (${SWEEP_S:-230} s);
#   2. issue 10's "wgpu at ≥ 50 % of CUDA": prefill 1024, batch-1 decode 1024 → 32 and the image
#      encode at num_crops 16 on wgpu f16 (Vulkan has no bf16 arithmetic; its first run also
#      compiles SPIR-V and tunes the matmuls: ${WGPU_S:-200} s), then cuda f16 (${CUDA_S:-80} s).
source scripts/gpu_env.sh
timed_folders s26b
cd $D
bench_parts $RS "sweep::${SWEEP_S:-230}:--scenarios generation --shapes 1024x128 --warmup 1 --runs 5 --generation-runs 1 --parallel 1,10,64,128,256 --batching engine,static"
grep "^generation" $RS/sweep.log | cut -c1-220
PTS="--scenarios prefill,latency,images --prompt-lengths 1024 --prefill-batches 1 --latency-shape 1024x32 --images 1344x1344 --num-crops 16 --warmup 1 --runs 3"
for part in "wgpu-f16:wgpu:f16:${WGPU_S:-200}" "cuda-f16:cuda:f16:${CUDA_S:-80}"; do
  IFS=: read -r name dev dt secs <<< "$part"; s=$(date +%s)
  timeout "$secs" $B/phi3v bench run --preset phi3v-128k --device $dev --dtype $dt $PTS --out "$RS/$name" > "$RS/$name.log" 2>&1
  echo "=== $name rc=$? $(( $(date +%s) - s )) s"; grep -E "^prefill|^latency|^image|error|failed" "$RS/$name.log" | cut -c1-200
done
cd $R; (cd $OUT && tar czf s26b.tgz s26b && rm -rf s26b)
