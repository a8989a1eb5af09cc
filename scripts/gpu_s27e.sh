#!/usr/bin/env bash
# Session 27, call 5 (H100; the pack of 847eebc in .gpu; carry .gpu and .gl). ~260 s: CubeCL's
# sliced pages (default) against whole pages per allocation (CUBECL_CUDA_MEMORY=exclusive) in
# the same call, generation 1024 → 128 through the engine at 1, 10 and 64 parallel requests
# (bf16, phi3v-128k shapes; call 4 found 64 requests at 1816 tokens/s with whole pages, where
# session 26 had 2028 with sliced ones, in another call and before `mma_linear`).
source scripts/gpu_env.sh
timed_folders s27e
cd $D
GEN="--scenarios generation --shapes 1024x128 --warmup 1 --runs 5 --generation-runs 1 --batching engine --parallel 1,10,64"
TAIL=3 bench_parts $RS "sliced::${GEN_S:-120}:$GEN" "exclusive:CUBECL_CUDA_MEMORY=exclusive:${GEN_S:-120}:$GEN"
grep -H "^generation" $RS/*.log | cut -c1-220
cd $R; (cd $OUT && tar czf s27e.tgz s27e && rm -rf s27e)
