#!/usr/bin/env bash
# One device call for the open follow-ups of 2026-12-03 (parallel jobs, one deadline):
#  10  kernel-source   the kernels test on cuda f32 with CubeCL's compilation log at level "full"
#                      (every kernel's CUDA source -> $OUT/compile.log.gz)
#  10  kernel-validate the same with CubeCL's check_mode "validate" (out-of-bounds accesses of
#                      unchecked launches reported)
#  10  kernels-cuda-bf16 the kernels test on cuda bf16
#   5  parity-cuda-bf16-composed    the parity suite on cuda bf16 with attention composed from
#                      matmul and softmax (Burn's fused attention stalls there in bf16)
#   5  generate-cuda-bf16-composed  phi3v generate on cuda bf16, the same switch
#   8  engine-cuda-f32 the engine's concurrency test on cuda f32 (kernels off by default there)
#   9  conf-plugin-half-composed    the plugin's half-precision op checks, composed attention
#   9  iluvatar-standin the Iluvatar shim over the NVIDIA libraries, logits vs cuda, f16
# Usage (device tool, carry .gpu): bash scripts/gpu_followups.sh [seconds per job]
source scripts/gpu_env.sh
LIMIT=${1:-300}; M=$R/tests/fixtures/models; I=$R/tests/fixtures/images
C=$B/phi3v-plugin-conformance; PL=$B/libphi3v_plugin_cuda.so
# The diagnostic jobs run 150 s with their own cubecl.toml (no kernel cache: every kernel compiles).
LIMIT=150 JOB_TOML='[compilation.logger]\nlevel = "full"\nfile = "%s/compile.log"\nappend = true\n' job kernel-source \
  env PHI3V_TEST_DEVICES=cuda:f32 $B/kernels --nocapture
LIMIT=150 JOB_TOML='[compilation]\ncheck_mode = "validate"\n' job kernel-validate env PHI3V_TEST_DEVICES=cuda:f32 $B/kernels --nocapture
job kernels-cuda-bf16 env PHI3V_TEST_DEVICES=cuda:bf16 $B/kernels --nocapture
JOB_AUTOTUNE_LEVEL=minimal job parity-cuda-bf16-composed env PHI3V_COMPOSED_ATTENTION=1 $C --device cuda --parity-only --parity-dtype bf16
JOB_AUTOTUNE_LEVEL=minimal job generate-cuda-bf16-composed env PHI3V_COMPOSED_ATTENTION=1 $B/phi3v generate --model $M/phi3v-tiny --device cuda --dtype bf16 --image $I/astronaut.png --prompt "What is the content of this image in details?" --max-new-tokens 10 --json
job engine-cuda-f32 env PHI3V_TEST_DEVICES=cuda:f32 $B/engine concurrent --nocapture
JOB_AUTOTUNE_LEVEL=minimal job conf-plugin-half-composed env PHI3V_COMPOSED_ATTENTION=1 $C --device plugin:$PL:0 --dtypes bf16,f16 --ops-only
[ -e $B/libphi3v_plugin_iluvatar.so ] && JOB_AUTOTUNE_LEVEL=minimal job iluvatar-standin env PHI3V_COREX_STANDIN=1 $B/phi3v-logits-diff --device plugin:$B/libphi3v_plugin_iluvatar.so:0 --against cuda:0 --dtype f16
wait
[ -f $W/kernel-source/compile.log ] && gzip -c $W/kernel-source/compile.log > $OUT/compile.log.gz
TAIL=8 show kernel-source kernel-validate kernels-cuda-bf16 parity-cuda-bf16-composed generate-cuda-bf16-composed engine-cuda-f32 conf-plugin-half-composed iluvatar-standin | cut -c1-300
collect
tar czf $OUT/round.tgz -C /tmp/res . && ls -la $OUT
