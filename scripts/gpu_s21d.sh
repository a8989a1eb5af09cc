#!/usr/bin/env bash
# Session 21, third call on the H200 that gpu_s21a/b.sh warmed (no Vulkan there, so issue 5's
# wgpu half of gpu_s21c.sh cannot run): side by side (~480 s)
#   kernels-bf16 — the kernels test on cuda bf16 again in gpu_s21a.sh's folder (its compiled
#     kernels kept; it ran out of time there), cuBLAS under both orderings, `scores` with cuBLAS
#     on CubeCL's stream;
#   issue 9 at lower CPU priority (nice): plugin-ops (op checks f32 through the reference CUDA
#     plugin), plugin-parity (fixture suite through the plugin, f32), plugin-diff (last logits,
#     plugin vs cuda, f32), iluvatar-f16 (the Iluvatar shim in stand-in mode);
#   then on the quiet GPU the plugin's launch overhead (tiny preset decode latency, cuda, plugin).
source scripts/gpu_env.sh
RS=$OUT/s21d; mkdir -p $RS
PL=$B/libphi3v_plugin_cuda.so; IL=$B/libphi3v_plugin_iluvatar.so
export PHI3V_PLUGIN_KERNEL_DIR=$W/failed-kernels
if [ -d $W/kernels-bf16 ]; then
  (cd $W/kernels-bf16 && t0=$(date +%s) && PHI3V_TEST_DEVICES=cuda:0:bf16 timeout ${KERNELS_S:-450} $B/kernels --nocapture > out.txt 2> err.txt; echo "rc=$? ($(( $(date +%s) - t0 )) s)" >> out.txt) &
else
  LIMIT=${KERNELS_S:-450} job kernels-bf16 env PHI3V_TEST_DEVICES=cuda:0:bf16 $B/kernels --nocapture
fi
LIMIT=${JOBS_S:-420}
job plugin-ops nice -n 10 $B/phi3v-plugin-conformance --device plugin:$PL:0 --ops-only --dtypes f32
job plugin-parity nice -n 10 $B/phi3v-parity --device plugin:$PL:0 --dtype f32
job plugin-diff nice -n 10 $B/phi3v-logits-diff --device plugin:$PL:0 --against cuda:0 --dtype f32
job iluvatar-f16 env PHI3V_COREX_STANDIN=1 nice -n 10 $B/phi3v-logits-diff --device plugin:$IL:0 --against cuda:0 --dtype f16
wait; collect
echo "=== kernels-bf16: $(tail -n1 $W/kernels-bf16/out.txt)"; grep -hE "test result|FAIL|panicked|blas_matmul|refused" $W/kernels-bf16/out.txt $W/kernels-bf16/err.txt | cut -c1-220 | tail -12
TAIL=8 show plugin-ops plugin-parity plugin-diff iluvatar-f16 | cut -c1-220
ls $PHI3V_PLUGIN_KERNEL_DIR 2>/dev/null | head
plugin_launch_cost $RS $PL ${LAUNCH_S:-50}
cp /tmp/res/* $RS/ 2>/dev/null; [ -d $PHI3V_PLUGIN_KERNEL_DIR ] && cp -r $PHI3V_PLUGIN_KERNEL_DIR $RS/
(cd $OUT && tar czf s21d.tgz s21d && rm -rf s21d)
ls -la $OUT
