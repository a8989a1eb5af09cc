#!/usr/bin/env bash
# Session 16. This script was written but not run: the session had no device time.
#
# What it measures: the batch-1 decode levers that need no new code (issue 10: b=1 is at 225
# tokens/s and the goal is 300). All points use the static batch at 1 parallel, 1024 → 128,
# with the same binary in the same call:
#   base   — the defaults;
#   nosplit — PHI3V_KERNELS_OFF=decode_attention_split: one cube per head, with no combining
#             launch. This is one launch fewer per layer, and the step is host-bound (host 99 %
#             of the step in session 15);
#   noplanes — PHI3V_KERNELS_OFF=decode_attention_planes: the units-over-keys variant (one
#              launch);
#   lat    — the batch-1 latency report (optimum-benchmark style) with the defaults.
#
# Carry: .gpu (phi3v, plus the cache part of an earlier call).
# Usage (device tool): bash scripts/gpu_s16c.sh   (about 200 s)
source scripts/gpu_env.sh
D=$W/bench; mkdir -p $D; RS=$OUT/s16c; mkdir -p $RS
printf '[compilation]\ncache = "local"\n[autotune]\ncache = "local"\n' > $D/cubecl.toml
[ -f .gpu/cache.tgz ] && tar xzf .gpu/cache.tgz -C $D
cd $D
G="--scenarios generation --parallel 1 --batching static --shapes 1024x128 --warmup 1 --generation-runs 3"
bench_parts $RS "base::50:$G" "nosplit:PHI3V_KERNELS_OFF=decode_attention_split:50:$G" \
  "noplanes:PHI3V_KERNELS_OFF=decode_attention_planes:50:$G" "lat::50:--scenarios latency --latency-shape 1024x128 --warmup 1 --runs 5"
cd $R
(cd $OUT && tar czf s16c.tgz s16c && rm -rf s16c)
tar czf - -C $D . | split -b 15M - $OUT/cache.tgz.part-
ls -la $OUT
