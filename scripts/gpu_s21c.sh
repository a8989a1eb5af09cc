#!/usr/bin/env bash
# Session 21, third call (full pack from scripts/build_gpu_bins.sh; on the machine gpu_s21a.sh
# and gpu_s21b.sh warmed, or a fresh one). Side by side, then one timed pair (~520 s):
#   issue 9, the plugin runtime with the reference CUDA plugin on this GPU:
#     plugin-ops      — phi3v-plugin-conformance's op checks against the CPU in f32, f16, bf16;
#     plugin-parity   — the fixture parity suite through the plugin, f32;
#     plugin-diff     — last-position logits of every case, plugin vs `cuda`, f32;
#     iluvatar-f16    — the Iluvatar shim in stand-in mode (NVIDIA's libraries), logits vs cuda, f16;
#   issue 5 (carry .gl, the Vulkan loader, docs/GPU.md): the fixture parity suite on wgpu over
#     NVIDIA's Vulkan driver in f32 (stage by stage) and f16, and on cuda f32; `phi3v generate`
#     on the tiny checkpoint on cuda (bf16, f32) and wgpu (f32) against the fixture's greedy ids;
#     BF16_CASES="a b": those fixture cases in bf16 on cuda, one job per case;
#   then, on the quiet GPU, the plugin's launch overhead: batch-1 decode latency on the tiny
#     preset (f32, launch-bound), `cuda` and then the plugin.
source scripts/gpu_env.sh
RS=$OUT/s21c; mkdir -p $RS
PL=$B/libphi3v_plugin_cuda.so; IL=$B/libphi3v_plugin_iluvatar.so
export PHI3V_PLUGIN_KERNEL_DIR=$W/failed-kernels
LIMIT=${JOBS_S:-440}
job plugin-ops $B/phi3v-plugin-conformance --device plugin:$PL:0 --ops-only --dtypes f32,f16,bf16
job plugin-parity $B/phi3v-parity --device plugin:$PL:0 --dtype f32
job plugin-diff $B/phi3v-logits-diff --device plugin:$PL:0 --against cuda:0 --dtype f32
job iluvatar-f16 env PHI3V_COREX_STANDIN=1 $B/phi3v-logits-diff --device plugin:$IL:0 --against cuda:0 --dtype f16
job parity-wgpu-f32 $B/phi3v-parity --device wgpu --dtype f32 --stages
job parity-wgpu-f16 $B/phi3v-parity --device wgpu --dtype f16
job parity-cuda-f32 $B/phi3v-parity --device cuda --dtype f32
for d in cuda:bf16 cuda:f32 wgpu:f32; do job generate-${d/:/-} $B/phi3v "${GEN_TINY[@]}" --device ${d%%:*} --dtype ${d##*:}; done
[ -n "${BF16_CASES:-}" ] && parity_jobs $BF16_CASES
wait; collect
TAIL=8 show plugin-ops plugin-parity plugin-diff iluvatar-f16 | cut -c1-220
for n in parity-wgpu-f32 parity-wgpu-f16 parity-cuda-f32; do echo "=== $n: $(tail -n1 $W/$n/out.txt)"; grep -E "^\| |PASS|FAIL|pass|fail" $W/$n/out.txt | cut -c1-200 | tail -24; grep -v "^\s*$" $W/$n/err.txt | tail -3 | cut -c1-200; done
for n in generate-cuda-bf16 generate-cuda-f32 generate-wgpu-f32; do
  python3 scripts/greedy_check.py $W/$n/out.txt $R/tests/fixtures/cases/astronaut_describe.json $n; tail -n1 $W/$n/out.txt; grep -v "^\s*$" $W/$n/err.txt | tail -2 | cut -c1-200
done
[ -n "${BF16_CASES:-}" ] && parity_report
ls $PHI3V_PLUGIN_KERNEL_DIR 2>/dev/null | head
plugin_launch_cost $RS $PL ${LAUNCH_S:-60}
cp /tmp/res/* $RS/ 2>/dev/null; [ -d $PHI3V_PLUGIN_KERNEL_DIR ] && cp -r $PHI3V_PLUGIN_KERNEL_DIR $RS/
(cd $OUT && tar czf s21c.tgz s21c && rm -rf s21c)
ls -la $OUT
