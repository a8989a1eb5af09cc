#!/usr/bin/env bash
# Session 26, call 3 (H100; the full pack in .gpu; carry .gpu and .gl). ~300 s, one process at a
# time on the quiet GPU, nvidia-smi's memory.used sampled every 0.5 s into $RS/smi-NAME.csv:
#   1. issue 8: the engine at 128 and 256 parallel requests (1024 → 128) in a process of its
#      own (call 2's sweep failed at 128 allocating one of CubeCL's 1.33 GB pages after the
#      1–64 points), then, if that fails too, with --memory-fraction 0.75;
#   2. issue 10: 10 parallel requests through the engine with cuBLAS for every product of 2 or
#      more rows (PHI3V_SKINNY_MAX_ROWS=1 PHI3V_BLAS_MIN_ROWS=2) against the default.
source scripts/gpu_env.sh
timed_folders s26c
cd $D
smi() { nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader -lms 500 > $RS/smi-$1.csv & SMI=$!; }
GEN="--scenarios generation --shapes 1024x128 --warmup 1 --runs 5 --generation-runs 1 --batching engine"
smi big; bench_parts $RS "big::${BIG_S:-110}:$GEN --parallel 128,256"; kill $SMI
if ! grep -q "engine batching, 256 parallel: [0-9]" $RS/big.log; then
  smi big75; bench_parts $RS "big75::${BIG_S:-110}:$GEN --parallel 128,256 --memory-fraction 0.75"; kill $SMI
fi
bench_parts $RS "ten::${TEN_S:-50}:$GEN --parallel 1,10" "ten-blas:PHI3V_SKINNY_MAX_ROWS=1 PHI3V_BLAS_MIN_ROWS=2:${TEN_S:-50}:$GEN --parallel 1,10"
grep -H "^generation\|pool capped\|can't allocate" $RS/*.log | sort -u | cut -c1-220
for f in $RS/smi-*.csv; do echo "$f: peak $(cut -d, -f2 $f | sort -n | tail -1)"; done
cd $R; (cd $OUT && tar czf s26c.tgz s26c && rm -rf s26c)
