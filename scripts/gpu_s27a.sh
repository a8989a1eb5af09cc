#!/usr/bin/env bash
# Session 27, call 1 (H100; the pack of 24454aa in .gpu; carry .gpu and .gl). ~300 s:
# the GPU timeline of decode steps (issue 10: "break batch-1 decode into its kernels"), with
# Nsight Systems where the image has it: generation 1024 → 96 through the engine at 1 and at 10
# parallel requests (bf16, phi3v-128k shapes), each kernel's GPU time, the gaps between kernels
# and how busy the GPU is over the decode steps (bench/kernel_timeline.py). Without nsys, Nsight
# Compute's per-kernel durations over a window of 1500 launches inside the decode steps.
source scripts/gpu_env.sh
timed_folders s27a
cd $D
NSYS=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys /usr/local/cuda/nsight-systems*/bin/nsys 2>/dev/null | head -1)
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
echo "nsys: ${NSYS:-none}; ncu: ${NCU:-none}"
RUN=($B/phi3v bench run --preset phi3v-128k --device cuda --dtype bf16 --scenarios generation --shapes 1024x96 --warmup 1 --runs 1 --generation-runs 1 --batching engine)
for p in 1 10; do
  s=$(date +%s)
  if [ -n "$NSYS" ]; then
    timeout ${NSYS_S:-120} $NSYS profile -t cuda --sample=none --cpuctxsw=none --force-overwrite true -o $RS/dec$p \
      "${RUN[@]}" --parallel $p --out $RS/run$p > $RS/dec$p.log 2>&1
    echo "=== nsys parallel $p rc=$? $(( $(date +%s) - s )) s"; grep "^generation" $RS/dec$p.log | cut -c1-200
    $NSYS stats --report cuda_gpu_trace --format csv --output $RS/dec$p $RS/dec$p.nsys-rep > /dev/null 2>&1
    ls $RS | grep "dec$p"
    python3 $R/bench/kernel_timeline.py $RS/dec${p}_cuda_gpu_trace.csv --out $RS/timeline$p.json | head -40
    rm -f $RS/dec$p.sqlite; xz -T4 $RS/dec${p}_cuda_gpu_trace.csv
  elif [ -n "$NCU" ]; then
    timeout ${NCU_S:-120} $NCU --metrics gpu__time_duration.sum --csv --launch-skip ${SKIP:-6000} --launch-count 1500 \
      "${RUN[@]}" --parallel $p --out $RS/run$p > $RS/ncu$p.csv 2> $RS/ncu$p.err
    echo "=== ncu parallel $p rc=$? $(( $(date +%s) - s )) s"; tail -3 $RS/ncu$p.err
    python3 $R/bench/ncu_kernel_times.py $RS/ncu$p.csv
  fi
done
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
(cd $OUT && tar czf s27a.tgz s27a && rm -rf s27a)
