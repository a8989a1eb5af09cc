#!/usr/bin/env bash
# Op-level diagnostics on the GPU machine (phi3v-parity --ops): linear in several layouts and
# causal attention around lengths that are multiples of 8, per backend, against the CPU; and the
# wgpu parity cases that fail with fused attention, rerun with composed attention.
# Usage (device tool, carry .gpu and .gl): bash scripts/gpu_diag.sh [seconds per job]
source scripts/gpu_env.sh
LIMIT=${1:-150}
job ops-cuda-f32  $B/phi3v-parity --device cuda --dtype f32 --ops ${LARGE:-}
job ops-cuda-bf16 $B/phi3v-parity --device cuda --dtype bf16 --ops ${LARGE:-}
job ops-wgpu-f32  $B/phi3v-parity --device wgpu --dtype f32 --ops ${LARGE:-}
job parity-wgpu-composed env PHI3V_COMPOSED_ATTENTION=1 $B/phi3v-parity --device wgpu --dtype f32 \
  --cases astronaut_describe,camera_gray_jpeg,coffee_portrait,tiny_rgba_upscaled,long_context_two_images
wait
TAIL=8 show ops-cuda-f32 ops-cuda-bf16 ops-wgpu-f32 parity-wgpu-composed
