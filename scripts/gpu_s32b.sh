#!/usr/bin/env bash
# Session 32, call 2: the H100 kind only (`kind: nvidia-h100-x1`; wgpu needs NVIDIA's Vulkan
# driver, which the H200 image lacks); a pack of phi3v (built with feature `vulkan`: SPIR-V from
# CubeCL's own compiler, cooperative matrices), phi3v-parity and the kernels test in .gpu; carry
# .gpu and .gl. ≤ 480 s, one timed process at a time:
#   1. what the adapter offers: `phi3v devices` and the Vulkan driver's cooperative matrices;
#   2. issue 10's "wgpu at ≥ 50 % of CUDA" as session 26 measured it with WGSL (s26b): prefill
#      1024, batch-1 decode 1024 → 32, image encode at num_crops 16, wgpu f16 then cuda f16;
#   3. `bench matmul` on wgpu f16: Burn's autotuned matmul at the prefill's and CLIP's shapes
#      and 8192³ (session 26's WGSL: 15 TFLOP/s at 8192³);
#   4. the SPIR-V kernels' correctness on NVIDIA: the fixture parity on wgpu f16 and the main
#      kernels test on wgpu f32 and f16.
source scripts/gpu_env.sh
echo "pack of $(head -1 .gpu/commit.txt)"
timed_folders s32b
cd $D
timeout 60 $B/phi3v devices 2>&1 | head -20
(command -v vulkaninfo > /dev/null && vulkaninfo 2>/dev/null | grep -iA3 "cooperative" | head -20) || echo "(no vulkaninfo)"
PTS="--scenarios prefill,latency,images --prompt-lengths 1024 --prefill-batches 1 --latency-shape 1024x32 --images 1344x1344 --num-crops 16 --warmup 1 --runs 3"
for part in "wgpu-f16:wgpu:f16:${WGPU_S:-200}" "cuda-f16:cuda:f16:${CUDA_S:-70}"; do
  IFS=: read -r name dev dt secs <<< "$part"; s=$(date +%s)
  timeout "$secs" $B/phi3v bench run --preset phi3v-128k --device $dev --dtype $dt $PTS --out "$RS/$name" > "$RS/$name.log" 2>&1
  echo "=== $name rc=$? $(( $(date +%s) - s )) s"; grep -E "^prefill|^latency|^image|rror|failed|panicked" "$RS/$name.log" | cut -c1-200 | head -8
done
s=$(date +%s)
timeout ${MM_S:-60} $B/phi3v bench matmul --device wgpu --dtype f16 --tilings "burn" --shapes "1024,3072,9216;9809,1024,4096;8192,8192,8192" \
  --warmup 2 --runs 5 --out $RS/mm-wgpu-f16.json > $RS/mm-wgpu-f16.log 2>&1
echo "=== matmul wgpu f16 rc=$? $(( $(date +%s) - s )) s"; grep "^|\|rror\|panicked" $RS/mm-wgpu-f16.log | head -8 | cut -c1-200
cd $R
LIMIT=${TEST_S:-150} job parity-wgpu-f16 $B/phi3v-parity --device wgpu --dtype f16
LIMIT=${TEST_S:-150} job kernels-wgpu env PHI3V_TEST_DEVICES=wgpu:0:f32,wgpu:0:f16 $B/kernels --nocapture
wait; collect; cp /tmp/res/parity-* /tmp/res/kernels-* $RS/ 2>/dev/null
echo "=== parity wgpu f16"; grep -hE "^\| [a-z]|rc=|FAIL|differs|rror" $W/parity-wgpu-f16/out.txt $W/parity-wgpu-f16/err.txt | cut -c1-200 | head -24
echo "=== kernels wgpu"; grep -hE "test result|panicked|rc=|FAIL|^test " $W/kernels-wgpu/out.txt $W/kernels-wgpu/err.txt | cut -c1-200 | head -30
echo "done at $SECONDS s"
(cd $OUT && tar czf s32b.tgz s32b && rm -rf s32b)
