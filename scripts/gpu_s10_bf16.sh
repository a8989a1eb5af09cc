#!/usr/bin/env bash
# Session 10's bf16 correctness call (issues 5 and 10), on the machine warm from
# scripts/gpu_s10_gen.sh (its compiled bf16 kernels seed the jobs): the kernels test on cuda
# bf16 (CPU witness), the fixture parity suite on cuda bf16 for CASES (one job each), and
# `phi3v generate` on the tiny checkpoint in bf16 (greedy ids against the fixture), LIMIT s each.
# Usage (device tool, carry .gpu): bash scripts/gpu_s10_bf16.sh [job seconds]
source scripts/gpu_env.sh
LIMIT=${1:-240}; C=$B/phi3v-plugin-conformance
mkdir -p /tmp/res; tar czf .gpu/cache.tgz -C target . 2>/dev/null
job kernels-cuda-bf16 env PHI3V_TEST_DEVICES=cuda:bf16 $B/kernels --nocapture
for c in ${CASES:-coffee_portrait multi_turn two_images camera_gray_jpeg}; do
  job parity-bf16-$c $C --device cuda --parity-only --parity-dtype bf16 --cases $c
done
job generate-cuda-bf16 $B/phi3v "${GEN_TINY[@]}" --device cuda --dtype bf16
# wgpu over Vulkan: why the NVIDIA ICD does not load (call 1: `wgpu` not present).
{ ldd /usr/lib/libGLX_nvidia.so.0 | grep -i "not found"; ls -la /usr/lib/x86_64-linux-gnu/libvulkan* /usr/lib/libnvidia-gl* 2>&1
  VK_LOADER_DEBUG=error,warn,driver VK_DRIVER_FILES=/usr/share/vulkan/icd.d/nvidia_icd.json timeout 60 $B/phi3v devices 2>&1 | head -40; } > /tmp/res/wgpu-diag.txt 2>&1
wait
head -30 /tmp/res/wgpu-diag.txt | cut -c1-200
TAIL=4 show kernels-cuda-bf16 generate-cuda-bf16 | cut -c1-250
grep -c "^cuda bf16" $W/kernels-cuda-bf16/err.txt; grep -h "FAIL" $W/kernels-cuda-bf16/err.txt | head
grep "add_rms\|rotary_append\|linear \[10" $W/kernels-cuda-bf16/err.txt | cut -c1-160
echo "=== parity bf16"; cat $W/parity-bf16-*/out.txt | grep "^| [a-z]\|rc=" | sort -u | cut -c1-300
collect
tar czf $OUT/bf16.tgz -C /tmp/res . && ls -la $OUT
