#!/usr/bin/env bash
# Session 27, call 4 (H100; the pack of 847eebc in .gpu; carry .gpu and .gl). ~330 s, one process
# at a time on the quiet GPU, bf16, phi3v-128k shapes:
#   1. the staged tensor-core product's shape at 10 rows (decode breakdown): chunks of 128,
#      16 planes, 4 planes (default: 8 planes, chunks of 64);
#   2. whole pages per allocation (CUBECL_CUDA_MEMORY=exclusive) at 64 and 256 parallel
#      requests through the engine (issue 8's points: does the step's memory still fit, and
#      what do they give against session 26's 2027.9 and 2233.9 tokens/s), nvidia-smi's
#      memory.used every 0.5 s.
source scripts/gpu_env.sh
timed_folders s27d
cd $D
BD=(bench breakdown --preset phi3v-128k --device cuda --dtype bf16 --prefill 0 --no-image --decode-batches 10 --warmup 3 --runs 20)
for part in "c128:PHI3V_MMA_LINEAR=8,128,4,1" "p16:PHI3V_MMA_LINEAR=16,64,4,1" "p4:PHI3V_MMA_LINEAR=4,64,4,1" "default:"; do
  name=${part%%:*}; vars=${part#*:}
  env $vars timeout ${BD_S:-60} $B/phi3v "${BD[@]}" --out $RS/bd-$name > $RS/bd-$name.log 2>&1
  echo "=== breakdown $name (${vars:-defaults}) rc=$?"
  grep -E "proj|whole" $RS/bd-$name/breakdown.md 2>/dev/null | cut -c1-170
done
nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader -lms 500 > $RS/smi-big.csv & SMI=$!
TAIL=4 bench_parts $RS "big:CUBECL_CUDA_MEMORY=exclusive:${BIG_S:-200}:--scenarios generation --shapes 1024x128 --warmup 1 --runs 5 --generation-runs 1 --batching engine --parallel 64,256"
kill $SMI; echo "peak memory.used: $(cut -d, -f2 $RS/smi-big.csv | sort -n | tail -1)"
grep "^generation\|pool capped\|rror" $RS/big.log | cut -c1-220
cd $R; (cd $OUT && tar czf s27d.tgz s27d && rm -rf s27d)
