#!/usr/bin/env bash
# Benchmarks on the GPU machine: `phi3v bench run` for the Phi-3-vision-128k shapes (random
# bf16 weights on CUDA), then the PyTorch peer on the same shapes, then `phi3v bench compare`.
# Results (card, graphs, JSON, CSV, comparison) come back as $OUT/bench.tgz.
# Usage (device tool, carry .gpu and .gl): bash scripts/gpu_bench.sh [ours-seconds] [peer-seconds]
source scripts/gpu_env.sh
OURS=${1:-300}; PEER=${2:-150}; D=$W/bench; mkdir -p $D
printf '[compilation]\ncache = "local"\n[autotune]\ncache = "local"\n' > $D/cubecl.toml
[ -f .gpu/cache.tgz ] && tar xzf .gpu/cache.tgz -C $D
# Every new shape compiles and autotunes its kernels (minutes on a fresh machine): few shapes,
# the most telling first; results are written after every point.
SHAPES=${SHAPES:-"--prompt-lengths 1024,4096 --prefill-batches 1,8 --max-prefill-tokens 8192 --warmup 1 --runs 5 --parallel 1,10,64 --shapes 1024x128 --images 1344x1344 --num-crops 16 --latency-shape 1024x128"}
( cd $D && timeout $OURS $B/phi3v bench run --preset phi3v-128k --device cuda $SHAPES --out $D/ours 2>&1 | grep -v "^\s*$" | tail -40 )
if [ "${PEER}" != 0 ]; then
  timeout $PEER python3 bench/peer_torch.py --preset cli/presets/phi3v-128k.json --out $D/peer.json --ours $D/ours/results.json \
    --prompt-lengths 1024,4096 --prefill-batches 1,8 --max-prefill-tokens 8192 --warmup 1 --runs 5 \
    --parallel 1,10,64 --shapes 1024x128 2>&1 | grep -v Warning | tail -25
  [ -f $D/ours/results.json ] && [ -f $D/peer.json ] && $B/phi3v bench compare $D/ours/results.json $D/peer.json | tee $D/compare.md
fi
cat $D/ours/card.md 2>/dev/null | head -40
tar czf $OUT/bench.tgz -C $D ours peer.json compare.md 2>/dev/null; rm -f $D/cubecl.toml
# Kernel caches for the next call, in parts under the 16 MB a returned file may have.
tar czf - -C $D --exclude=./ours --exclude=./peer.json --exclude=./compare.md . | split -b 15M - $OUT/cache.tgz.part-; ls -la $OUT
