#!/usr/bin/env bash
# Session 20, third call (gpu_s20a.sh's merged kernel cache in .gpu/, autotune dropped): `bench
# run` end to end on the phi3v-128k shapes (bf16) with the PyTorch peer in the same call
# (issue 6), under the new defaults plus the opt-in kernels (KERNELS, default all five):
#   ours — prefill 1024 and 4096, the image encode at num_crops 16 (1344² image), generation
#          1024 → 128 at 1, 10 and 64 parallel, static batching and the engine, and the batch-1
#          latency report (scenario 6);
#   peer — bench/peer_torch.py on the same points, then `phi3v bench compare`.
# Returns s20c.tgz (~420 s; OURS_S, PEER_S).
source scripts/gpu_env.sh
timed_folders s20c
cd $D
K=${KERNELS:-rotary_write_paged,layer_norm,quick_gelu,blas_matmul}
bench_parts $RS "ours:PHI3V_KERNELS_ON=$K:${OURS_S:-210}:--scenarios prefill,images,generation,latency,kv --prompt-lengths 1024,4096 --prefill-batches 1 --images 1344x1344 --num-crops 16 --shapes 1024x128 --parallel 1,10,64 --latency-shape 1024x128 --batching static,engine --warmup 1 --runs 5 --generation-runs 2"
cd $R
s=$(date +%s)
timeout ${PEER_S:-200} python3 bench/peer_torch.py --preset cli/presets/phi3v-128k.json --out $RS/peer.json --ours $RS/ours/results.json \
  --scenarios prefill,images,generation,latency,kv --prompt-lengths 1024,4096 --prefill-batches 1 --parallel 1,10,64 --shapes 1024x128 --latency-shape 1024x128 --warmup 1 --runs 3 2>&1 | grep -v Warning | tail -12
echo "=== peer rc=$? $(( $(date +%s) - s )) s"
[ -f $RS/ours/results.json ] && [ -f $RS/peer.json ] && $B/phi3v bench compare $RS/ours/results.json $RS/peer.json --bandwidth $(nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 && echo 4.8e12 || echo 3.35e12) > $RS/compare.md && head -40 $RS/compare.md
(cd $OUT && tar czf s20c.tgz s20c && rm -rf s20c)
ls -la $OUT
