#!/usr/bin/env bash
# Session 28, call 1 (H100; the pack of 847eebc in .gpu; carry .gpu and .gl). ~250 s:
# Nsight Compute on the few-row products, for the next change to them (issue 10):
#   1. `mma_linear` at 10 rows, the first four launches of a decode breakdown (qkv_proj, o_proj,
#      gate_up_proj + SiLU·mul, down_proj + residual; bf16, phi3v-128k shapes): speed of light,
#      occupancy, memory, warp states, launch and scheduler statistics;
#   2. the same for the CUDA-core skinny kernel at one row (the batch-1 products);
#   3. the same for `mma_linear` with 16 planes (the best of session 27's shapes).
source scripts/gpu_env.sh
timed_folders s28a
cd $D
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
echo "ncu: ${NCU:-none}"
BD=(bench breakdown --preset phi3v-128k --device cuda --dtype bf16 --prefill 0 --no-image --warmup 0 --runs 1)
SECTIONS="--section SpeedOfLight --section Occupancy --section MemoryWorkloadAnalysis --section WarpStateStats --section LaunchStats --section SchedulerStats --section ComputeWorkloadAnalysis --metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active.ratio"
for part in "mma10:mma_linear:10:" "skinny1:skinny_linear:1:" "mma10p16:mma_linear:10:PHI3V_MMA_LINEAR=16,64,4,1"; do
  IFS=: read -r name kernel rows vars <<< "$part"; s=$(date +%s)
  env $vars timeout ${NCU_S:-80} $NCU --kernel-name regex:"$kernel" --launch-count 4 $SECTIONS \
    $B/phi3v "${BD[@]}" --decode-batches $rows --out $RS/bd-$name > $RS/ncu-$name.txt 2>&1
  echo "=== ncu $name rc=$? $(( $(date +%s) - s )) s"
  grep -E "stalled_" $RS/ncu-$name.txt | awk '$NF+0 > 0.3' | sed 's/smsp__average_warps_issue_stalled_//' | cut -c1-110 | head -40
  grep -E "^  [a-z_]+.*\(|Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Block Limit|Waves Per SM|Grid Size|Block Size|Dynamic Shared|Static Shared|Warp Cycles Per Issued|Eligible Warps|No Eligible|L2 Hit|Mem Busy|Max Bandwidth" $RS/ncu-$name.txt | cut -c1-130 | head -90
done
cd $R; (cd $OUT && tar czf s28a.tgz s28a && rm -rf s28a)
