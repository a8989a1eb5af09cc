#!/usr/bin/env bash
# Session 22, first call (H100: wgpu needs its Vulkan driver; full pack from
# scripts/build_gpu_bins.sh in .gpu, and .gl, docs/GPU.md). Side by side (~540 s):
#   kernels-bf16    — the kernels test on cuda bf16 (both softmax kernels now share their
#                     #[cube] helpers; sessions 20 and 21 stopped before any comparison);
#   issue 5: the fixture parity suite on wgpu over NVIDIA's Vulkan driver in f32 (stage by
#     stage) and f16; `phi3v generate` on the tiny checkpoint on cuda bf16, wgpu f32 and wgpu
#     f16 against the fixture's greedy ids;
#   issue 9: the fixture parity suite on cuda f16 and through the Iluvatar shim in stand-in mode
#     (NVIDIA's libraries) in f16, each against the f32 reference: which side of session 21's
#     f16 difference is wrong;
#   warm-att        — gpu_s22b.sh's `bench attention --parts`, once, only to compile its kernels.
source scripts/gpu_env.sh
source scripts/gpu_cublas.sh
RS=$OUT/s22a; mkdir -p $RS
IL=$B/libphi3v_plugin_iluvatar.so
export PHI3V_PLUGIN_KERNEL_DIR=$W/failed-kernels
LIMIT=${TESTS_S:-540} job kernels-bf16 env PHI3V_TEST_DEVICES=cuda:0:bf16 $B/kernels --nocapture
LIMIT=${JOBS_S:-520}
job parity-wgpu-f32 $B/phi3v-parity --device wgpu --dtype f32 --stages
job parity-wgpu-f16 $B/phi3v-parity --device wgpu --dtype f16
job parity-cuda-f16 $B/phi3v-parity --device cuda --dtype f16
job parity-iluvatar-f16 env PHI3V_COREX_STANDIN=1 $B/phi3v-parity --device plugin:$IL:0 --dtype f16
for d in cuda:bf16 wgpu:f32 wgpu:f16; do job generate-${d/:/-} $B/phi3v "${GEN_TINY[@]}" --device ${d%%:*} --dtype ${d##*:}; done
LIMIT=300 job warm-att $B/phi3v bench attention --device cuda --dtype bf16 --flash "scores;4,2,2" --parts --warmup 1 --runs 1 --out att.json
wait; collect; cp /tmp/res/* $RS/ 2>/dev/null
echo "=== kernels-bf16"; grep -hE "test result|FAIL|panicked|rc=|blas_matmul|softmax" $W/kernels-bf16/out.txt $W/kernels-bf16/err.txt | cut -c1-220 | tail -40
for n in parity-wgpu-f32 parity-wgpu-f16 parity-cuda-f16 parity-iluvatar-f16; do
  echo "=== $n: $(tail -n1 $W/$n/out.txt)"; grep -E "^\| |PASS|FAIL|pass|fail" $W/$n/out.txt | cut -c1-200 | tail -24; grep -v "^\s*$" $W/$n/err.txt | tail -3 | cut -c1-200
done
for n in generate-cuda-bf16 generate-wgpu-f32 generate-wgpu-f16; do
  python3 scripts/greedy_check.py $W/$n/out.txt $R/tests/fixtures/cases/astronaut_describe.json $n; tail -n1 $W/$n/out.txt; grep -v "^\s*$" $W/$n/err.txt | tail -2 | cut -c1-200
done
echo "=== warm-att: $(tail -n1 $W/warm-att/out.txt)"; grep "^| " $W/warm-att/out.txt | cut -c1-160
ls $PHI3V_PLUGIN_KERNEL_DIR 2>/dev/null | head; [ -d $PHI3V_PLUGIN_KERNEL_DIR ] && cp -r $PHI3V_PLUGIN_KERNEL_DIR $RS/
(cd $OUT && tar czf s22a.tgz s22a && rm -rf s22a)
ls -la $OUT
