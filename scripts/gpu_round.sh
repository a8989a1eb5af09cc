#!/usr/bin/env bash
# One device call for what is left of issues 5, 8, 9 and 10 (2026-12-03), as parallel jobs
# under one deadline (device time is the scarce resource; results of every job, finished or
# not, come back in $OUT/round.tgz):
#  10  kernels-cuda        the model's kernels vs their composed fallbacks and a CPU witness,
#                          cuda f32 and bf16 (2026-12-03's first call: 9 of 24 f32 checks failed)
#  10  conf-cuda-f32       per-op checks on cuda f32 vs the CPU (kernel and composed variants)
#5,10  parity-cuda-f32     the fixture parity suite on cuda f32 with the kernels (default)
#5,10  parity-cuda-f32-composed  the same with PHI3V_FUSED_KERNELS=0
#   9  conf-plugin-ops-f32 phi3v-plugin-conformance through the reference CUDA plugin: per-op
#                          checks vs the CPU in f32
#   9  conf-plugin-parity-f32  its fixture parity suite in f32 (a job of its own, in parallel)
#   9  conf-plugin-half    the op checks in bf16 and f16 (autotune level minimal)
#   9  diff-plugin-f32     last-position logits, plugin vs --device cuda, f32
#   9  iluvatar-standin    the Iluvatar shim over the NVIDIA libraries, logits vs cuda, f16
#   5  parity-cuda-bf16    the parity suite on cuda in bf16 (autotune level minimal)
#   5  generate-cuda-bf16  phi3v generate on cuda in bf16
#   5  conf-cuda-bf16      the per-op checks on cuda in bf16 (which op stalls, if one does)
#   8  engine-cuda-f32     the engine's concurrency test on cuda f32
#   9  launch-overhead     batch-1 decode latency, tiny preset f32, cuda then the plugin
# (The uncontended kernel breakdown, scripts/gpu_kernels.sh, runs in a call of its own.)
# Binaries in .gpu/bin (bins.tar.xz and/or single .xz): phi3v, phi3v-plugin-conformance,
# phi3v-logits-diff, engine and kernels (test binaries), libphi3v_plugin_cuda.so,
# libphi3v_plugin_iluvatar.so.
# Usage (device tool, carry .gpu): bash scripts/gpu_round.sh [seconds per job]
source scripts/gpu_env.sh
LIMIT=${1:-330}; M=$R/tests/fixtures/models; I=$R/tests/fixtures/images
C=$B/phi3v-plugin-conformance; PL=$B/libphi3v_plugin_cuda.so
export PHI3V_PLUGIN_KERNEL_DIR=$W/failed-kernels
job kernels-cuda env PHI3V_TEST_DEVICES=cuda:f32,cuda:bf16 $B/kernels --nocapture
job conf-cuda-f32 $C --device cuda --dtypes f32 --ops-only
job parity-cuda-f32 $C --device cuda --parity-only --parity-dtype f32
job parity-cuda-f32-composed env PHI3V_FUSED_KERNELS=0 $C --device cuda --parity-only --parity-dtype f32
job conf-plugin-ops-f32 $C --device plugin:$PL:0 --dtypes f32 --ops-only
job conf-plugin-parity-f32 $C --device plugin:$PL:0 --parity-only --parity-dtype f32
JOB_AUTOTUNE_LEVEL=minimal job conf-plugin-half $C --device plugin:$PL:0 --dtypes bf16,f16 --ops-only
job diff-plugin-f32 $B/phi3v-logits-diff --device plugin:$PL:0 --against cuda:0 --dtype f32
JOB_AUTOTUNE_LEVEL=minimal job parity-cuda-bf16 $C --device cuda --parity-only --parity-dtype bf16
job engine-cuda-f32 env PHI3V_TEST_DEVICES=cuda:f32 $B/engine concurrent --nocapture
# Which op stalls cuda bf16 (its stderr names each op as it finishes).
JOB_AUTOTUNE_LEVEL=minimal job conf-cuda-bf16 $C --device cuda --dtypes bf16 --ops-only
JOB_AUTOTUNE_LEVEL=minimal job generate-cuda-bf16 $B/phi3v generate --model $M/phi3v-tiny --device cuda --dtype bf16 --image $I/astronaut.png --prompt "What is the content of this image in details?" --max-new-tokens 10 --json
[ -e $B/libphi3v_plugin_iluvatar.so ] && JOB_AUTOTUNE_LEVEL=minimal job iluvatar-standin env PHI3V_COREX_STANDIN=1 $B/phi3v-logits-diff --device plugin:$B/libphi3v_plugin_iluvatar.so:0 --against cuda:0 --dtype f16
# Issue 9's launch overhead: batch-1 decode latency through the plugin and through `cuda`, one
# after the other (f32 on the tiny preset: launch-bound, few kernels to compile). Needs the
# cli built with its `plugin` feature.
job launch-overhead bash -c "for d in cuda:0 plugin:$PL:0; do $B/phi3v bench run --preset tiny --device \$d --dtype f32 --scenarios latency --latency-shape 128x64 --warmup 2 --runs 10 --out launch-\${d%%:*} 2>&1 | grep -i 'latency\|error'; done"
wait
# BREAKDOWN=SECONDS: then, alone on the GPU, the kernel breakdown with the kernels (ours only),
# beside the peer breakdown measured uncontended on 2026-12-03 (same GPU kind).
if [ -n "${BREAKDOWN:-}" ]; then
  NOSKINNY=1 PEER_JSON=docs/bench/breakdown-h200-kernels/peer.json VARIANTS=ours bash scripts/gpu_kernels.sh $BREAKDOWN > $W/breakdown.log 2>&1
  cp $OUT/breakdown.tgz /tmp/res-breakdown.tgz 2>/dev/null; grep -A20 "^## decode b=1" $W/breakdown.log | head -40
fi
TAIL=6 show kernels-cuda conf-cuda-f32 parity-cuda-f32 parity-cuda-f32-composed conf-plugin-ops-f32 conf-plugin-parity-f32 conf-plugin-half conf-cuda-bf16 diff-plugin-f32 iluvatar-standin parity-cuda-bf16 generate-cuda-bf16 engine-cuda-f32 launch-overhead | cut -c1-300
collect
[ -d $W/failed-kernels ] && cp -r $W/failed-kernels /tmp/res/
cp $W/breakdown.log /tmp/res/ 2>/dev/null
tar czf $OUT/round.tgz -C /tmp/res . && ls -la $OUT
