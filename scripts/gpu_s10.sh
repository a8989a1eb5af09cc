#!/usr/bin/env bash
# Session 10's first device call (carry .gpu; binaries from scripts/build_gpu_bins.sh).
# 1. Alone on the machine (issue 10): `phi3v bench breakdown` (bf16, phi3v-128k shapes, decode
#    b=1 and b=10 after 1024 tokens, launch floor) twice: CubeCL's device thread spinning 2 ms
#    after its last task (patches/cubecl-common, the default) and upstream's budget
#    (CUBECL_DEVICE_THREAD_SPIN_US=0). Same binary, same kernels; the second run finds the
#    kernels compiled.
# 2. Then in parallel, LIMIT seconds each (issues 5, 8, 10): the kernels test on cuda f32 + bf16;
#    the fixture parity suite on cuda bf16, one job per case (compilation is per process, so the
#    cases compile side by side); `phi3v generate` on the tiny checkpoint on cuda in f32 and
#    bf16 (greedy ids checked against the fixture); the engine's tests on cuda f32; wgpu with
#    every Vulkan ICD file found on the machine.
# Usage (device tool): bash scripts/gpu_s10.sh [job seconds] [breakdown seconds]
source scripts/gpu_env.sh
LIMIT=${1:-300}; BD=${2:-150}
D=/tmp/res; mkdir -p $D
{ lscpu | grep -i "model name\|^CPU(s)\|hypervisor"; uname -r; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $D/machine.txt
cat $D/machine.txt
cd target
for spin in 2000 0; do
  CUBECL_DEVICE_THREAD_SPIN_US=$spin timeout $BD $B/phi3v "${DECODE_BREAKDOWN[@]}" --decode-batches 1,10 \
    --out $D/breakdown-spin$spin > $D/breakdown-spin$spin.log 2>&1
  echo "=== breakdown spin $spin µs rc=$?"; grep "whole step\|Host:\|per kernel" $D/breakdown-spin$spin.log | cut -c1-200
  grep "gate_up_proj\|down_proj\|qkv_proj" $D/breakdown-spin$spin.log | cut -c1-120
done
cd $R
# Seed the jobs with the compiled bf16 kernels of the breakdown.
tar czf .gpu/cache.tgz -C target . 2>/dev/null
job kernels-cuda env PHI3V_TEST_DEVICES=cuda:f32,cuda:bf16 $B/kernels --nocapture
parity_jobs astronaut_describe camera_gray_jpeg coffee_portrait long_context_two_images multi_turn panorama text_only tiny_rgba_upscaled two_images
job generate-cuda-f32 $B/phi3v "${GEN_TINY[@]}" --device cuda --dtype f32
job generate-cuda-bf16 $B/phi3v "${GEN_TINY[@]}" --device cuda --dtype bf16
job engine-cuda-f32 env PHI3V_TEST_DEVICES=cuda:f32 $B/engine --nocapture
# wgpu over Vulkan: the loader from .gl and each NVIDIA ICD file the image has.
find / -xdev \( -name "nvidia_icd*.json" -o -name "libGLX_nvidia.so*" -o -name "libnvidia-glvkspirv*" \) 2>/dev/null | head > $D/vulkan-files.txt
{ echo "ICD and driver files:"; cat $D/vulkan-files.txt; ls /usr/share/vulkan/icd.d /etc/vulkan/icd.d 2>&1; } > $D/wgpu-diag.txt
for f in $(grep "icd.*json" $D/vulkan-files.txt); do
  echo "== VK_DRIVER_FILES=$f" >> $D/wgpu-diag.txt; cat $f >> $D/wgpu-diag.txt
  VK_DRIVER_FILES=$f timeout 60 $B/phi3v devices >> $D/wgpu-diag.txt 2>&1
done
cat $D/wgpu-diag.txt | head -40
wait
TAIL=6 show kernels-cuda generate-cuda-f32 generate-cuda-bf16 engine-cuda-f32 | grep -v "^cuda .*: [0-9.e-]* vs composed" | cut -c1-250
grep -h "FAIL\|skinny\|linear \[" $W/kernels-cuda/err.txt | cut -c1-160 | head -20
parity_report
# Greedy ids of generate against the fixture.
for n in generate-cuda-f32 generate-cuda-bf16; do
  python3 scripts/greedy_check.py $W/$n/out.txt $R/tests/fixtures/cases/astronaut_describe.json $n
done
collect
cp $D/*.txt /tmp/res/ 2>/dev/null
tar czf $OUT/round.tgz -C /tmp/res . && ls -la $OUT
