#!/usr/bin/env bash
# One device call (2026-12-03, session 9): where the host time of a decode step goes, then the
# runs issues 5 and 8 still lack, as parallel jobs.
#  10  breakdown+profile  alone on the GPU: `phi3v bench breakdown` (bf16, phi3v-128k shapes,
#                         decode b=1 and b=10 at 1024 cached tokens, prefill 1024) with the host
#                         sampled during 300 whole steps per phase (phi3v built with the feature
#                         `profile` and its symbol table: .gpu/bin/phi3v.xz)
# then in parallel (LIMIT seconds each):
#   5  parity-cuda-bf16   the fixture parity suite on cuda in bf16 (kernel caches of the
#                         breakdown seeded: its matmuls compile once)
#   5  parity-cuda-f32    the whole suite on cuda f32 (kernels on), every case and probe
#   5  parity-wgpu-f32    the suite on wgpu over the NVIDIA Vulkan driver (loader from .gl)
#   5  generate-{cuda,wgpu} `phi3v generate` on the tiny checkpoint, greedy tokens
# Usage (device tool, carry .gpu .gl): bash scripts/gpu_profile.sh [seconds per job]
source scripts/gpu_env.sh
LIMIT=${1:-300}; M=$R/tests/fixtures/models; I=$R/tests/fixtures/images
C=$B/phi3v-plugin-conformance
mkdir -p /tmp/res
(cd target && timeout 220 $B/phi3v bench breakdown --preset phi3v-128k --device cuda --dtype bf16 \
  --decode-batches 1,10 --prefill 1024 --warmup 3 --runs 20 --profile /tmp/res/profile --profile-steps 300 \
  --peer $R/docs/bench/breakdown-h200-kernels/peer.json --out /tmp/res/breakdown) > /tmp/res/breakdown.log 2>&1
echo "breakdown rc=$?"; grep -A22 "^## decode b=1" /tmp/res/breakdown.log | head -30; grep "whole step\|Host:" /tmp/res/breakdown.log
for f in /tmp/res/profile/*.top.md; do echo "=== $f"; head -60 "$f" | cut -c1-220; done
# The breakdown's compiled kernels seed the jobs (bf16 matmuls).
tar czf .gpu/cache.tgz -C target . 2>/dev/null
GEN=(generate --model $M/phi3v-tiny --image $I/astronaut.png --prompt "What is the content of this image in details?" --max-new-tokens 10 --json)
job parity-cuda-bf16 $C --device cuda --parity-only --parity-dtype bf16
job parity-cuda-f32 $C --device cuda --parity-only --parity-dtype f32
job parity-wgpu-f32 $C --device wgpu --parity-only --parity-dtype f32
job generate-cuda $B/phi3v "${GEN[@]}" --device cuda
job generate-wgpu $B/phi3v "${GEN[@]}" --device wgpu
job generate-cuda-bf16 $B/phi3v "${GEN[@]}" --device cuda --dtype bf16
wait
TAIL=8 show parity-cuda-bf16 parity-cuda-f32 parity-wgpu-f32 generate-cuda generate-wgpu generate-cuda-bf16 | cut -c1-300
collect
tar czf $OUT/round.tgz -C /tmp/res . && ls -la $OUT
