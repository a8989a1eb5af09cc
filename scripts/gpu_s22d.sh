#!/usr/bin/env bash
# Session 22, diagnosis call: gpu_s22a.sh found CUDA half precision wrong since the last check
# (session 12): `phi3v-parity --device cuda --dtype f16` fails every image case (vision embeds
# off by ~10; text_only passes) and `generate --device cuda --dtype bf16` gives other tokens,
# while wgpu f16 and the Iluvatar plugin in f16 pass. Each suspect turned off alone (~300 s):
#   stages     — the vision tower stage by stage against the CPU (f16);
#   tiles-off  — PHI3V_FLASH_ATTENTION=burn (Auto gives the vision tower the 4,2,2 tiles);
#   blas-off   — PHI3V_KERNELS_OFF=blas_matmul (cuBLAS on CubeCL's stream);
#   host-order — PHI3V_CUBLAS_ORDER=host;
#   planes-off — PHI3V_KERNELS_OFF=attention_softmax_planes;
#   generate bf16 under tiles-off and blas-off; generate f32.
source scripts/gpu_env.sh
source scripts/gpu_cublas.sh
RS=$OUT/s22d; mkdir -p $RS
LIMIT=${JOBS_S:-300}
C="--cases coffee_portrait,text_only"
job stages $B/phi3v-parity --device cuda --dtype f16 --stages --cases coffee_portrait
job tiles-off env PHI3V_FLASH_ATTENTION=burn $B/phi3v-parity --device cuda --dtype f16 $C
job blas-off env PHI3V_KERNELS_OFF=blas_matmul $B/phi3v-parity --device cuda --dtype f16 $C
job host-order env PHI3V_CUBLAS_ORDER=host $B/phi3v-parity --device cuda --dtype f16 $C
job planes-off env PHI3V_KERNELS_OFF=attention_softmax_planes $B/phi3v-parity --device cuda --dtype f16 $C
job gen-bf16-tiles-off env PHI3V_FLASH_ATTENTION=burn $B/phi3v "${GEN_TINY[@]}" --device cuda --dtype bf16
job gen-bf16-blas-off env PHI3V_KERNELS_OFF=blas_matmul $B/phi3v "${GEN_TINY[@]}" --device cuda --dtype bf16
job gen-f32 $B/phi3v "${GEN_TINY[@]}" --device cuda --dtype f32
wait; collect; cp /tmp/res/* $RS/ 2>/dev/null
echo "=== stages"; grep "^| " $W/stages/out.txt | cut -c1-160 | head -30
for n in tiles-off blas-off host-order planes-off; do echo "=== $n: $(tail -n1 $W/$n/out.txt)"; grep "^| [a-z]" $W/$n/out.txt | cut -c1-200; done
for n in gen-bf16-tiles-off gen-bf16-blas-off gen-f32; do python3 scripts/greedy_check.py $W/$n/out.txt $R/tests/fixtures/cases/astronaut_describe.json $n; tail -n1 $W/$n/out.txt; done
(cd $OUT && tar czf s22d.tgz s22d && rm -rf s22d)
