#!/usr/bin/env bash
# Session 26, call 4 (H100; the pack with the paged KV pool in persistent memory in .gpu; carry
# .gpu and .gl). ~430 s, one process at a time on the quiet GPU:
#   1. issue 8's sweep again, generation 1024 → 128 at 1, 10, 64, 128, 256 parallel requests, the
#      engine then static batching, nvidia-smi's memory.used every 0.5 s in $RS/smi-sweep.csv
#      (calls 2 and 3 failed at 128: the pool in CubeCL's sliced pages; ${SWEEP_S:-300} s);
#   2. where Nsight Compute is installed: one launch each of the `mma` attention kernel and of
#      `scores`' softmax at 1×32×1024×1024×96 causal, bf16 (speed of light, occupancy, memory
#      and warp-state sections), for the next attempt at the kernel (${NCU_S:-100} s).
source scripts/gpu_env.sh
timed_folders s26d
cd $D
nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader -lms 500 > $RS/smi-sweep.csv & SMI=$!
bench_parts $RS "sweep::${SWEEP_S:-300}:--scenarios generation --shapes 1024x128 --warmup 1 --runs 5 --generation-runs 1 --parallel 1,10,64,128,256 --batching engine,static"
kill $SMI; echo "peak memory.used: $(cut -d, -f2 $RS/smi-sweep.csv | sort -n | tail -1)"
grep "^generation\|pool capped" $RS/sweep.log | cut -c1-220
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
if [ -n "$NCU" ]; then
  timeout ${NCU_S:-100} $NCU --kernel-name regex:"mma|softmax" --launch-count 3 --section SpeedOfLight --section Occupancy \
    --section MemoryWorkloadAnalysis --section WarpStateStats --section LaunchStats \
    $B/phi3v bench attention --device cuda --dtype bf16 --flash "mma;scores" --shapes "1,32,1024,1024,96,causal" --warmup 1 --runs 1 \
    > $RS/ncu.txt 2>&1; echo "=== ncu rc=$?"; grep -E "==PROF==|Duration|Throughput|Occupancy|Registers|Shared Memory|Stall|Warp Cycles|Block Limit" $RS/ncu.txt | head -60 | cut -c1-160
else echo "no ncu"; fi
cd $R; (cd $OUT && tar czf s26d.tgz s26d && rm -rf s26d)
