#!/usr/bin/env bash
# Session 22, second call, right after gpu_s22a.sh on the same warm machine (its warm-att folder),
# bf16 on the phi3v-128k shapes (~480 s):
#   att   — `bench attention --parts`: burn, scores and the 4,2,2 tiles at prefill's causal 1024 and
#           CLIP's 17×16×577, and scores' parts on each whole problem (one chunk; q·kᵀ, the
#           softmax, p·v): where the ~1 ms of scores at CLIP's shape goes (issue 10);
#   ours  — `bench run` on the new defaults (cuBLAS on CubeCL's stream, the plane softmax):
#           prefill 1024 and 4096, the image encode at num_crops 16, generation 1024 → 128 at 1
#           and 10 parallel (static and engine), the batch-1 latency report;
#   peer  — bench/peer_torch.py on the same points, then `phi3v bench compare` (issues 6, 10).
source scripts/gpu_env.sh
timed_folders s22b
cd $D; [ -d $W/warm-att ] && cd $W/warm-att && rm -rf autotune
s=$(date +%s)
timeout ${ATT_S:-90} $B/phi3v bench attention --device cuda --dtype bf16 --flash "burn;scores;4,2,2" --parts --warmup 2 --runs 10 \
  --out $RS/att.json > $RS/att.md 2> $RS/att.log
echo "=== att rc=$? $(( $(date +%s) - s )) s"; grep "^| [0-9]" $RS/att.md | cut -c1-170; grep -h "refused" $RS/att.log | head -3
cd $D
bench_parts $RS "ours::${OURS_S:-220}:--scenarios prefill,images,generation,latency --prompt-lengths 1024,4096 --prefill-batches 1 --images 1344x1344 --num-crops 16 --shapes 1024x128 --parallel 1,10 --latency-shape 1024x128 --batching static,engine --warmup 1 --runs 5 --generation-runs 2"
cd $R
s=$(date +%s)
timeout ${PEER_S:-150} python3 bench/peer_torch.py --preset cli/presets/phi3v-128k.json --out $RS/peer.json --ours $RS/ours/results.json \
  --scenarios prefill,images,generation,latency --prompt-lengths 1024,4096 --prefill-batches 1 --parallel 1,10 --shapes 1024x128 --latency-shape 1024x128 --warmup 1 --runs 3 2>&1 | grep -v Warning | tail -12
echo "=== peer rc=$? $(( $(date +%s) - s )) s"
[ -f $RS/ours/results.json ] && [ -f $RS/peer.json ] && $B/phi3v bench compare $RS/ours/results.json $RS/peer.json --bandwidth $(nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 && echo 4.8e12 || echo 3.35e12) > $RS/compare.md && head -40 $RS/compare.md
(cd $OUT && tar czf s22b.tgz s22b && rm -rf s22b)
ls -la $OUT
