#!/usr/bin/env bash
# Session 16 — written, not run (no device time this session): issue 8's sweep, the engine
# against the static batch from 1 to 256 parallel requests (1024 → 128, bf16, phi3v-128k
# shapes), with the PyTorch peer at 1, 10 and 64 in the same call, then `bench compare`.
# Carry .gpu (phi3v from scripts/build_gpu_slim.sh, and the cache part of gpu_s16a.sh's call).
# The engine runs with the paged write kernel when gpu_s16a.sh found it passing on CUDA
# (PHI3V_KERNELS_ON passes through). Points run from few to many requests, so a time limit cuts
# the largest ones; results are written after every point.
# Usage (device tool): [PHI3V_KERNELS_ON=rotary_write_paged] bash scripts/gpu_s16b.sh [ours s] [peer s]
export PHI3V_KERNELS_ON
source scripts/gpu_env.sh
OURS=${1:-380}; PEER=${2:-150}
D=$W/bench; mkdir -p $D; RS=$OUT/s16b; mkdir -p $RS
printf '[compilation]\ncache = "local"\n[autotune]\ncache = "local"\n' > $D/cubecl.toml
[ -f .gpu/cache.tgz ] && tar xzf .gpu/cache.tgz -C $D
cd $D
s=$(date +%s)
timeout $OURS $B/phi3v bench run --preset phi3v-128k --device cuda --scenarios generation --shapes 1024x128 \
  --parallel ${PARALLEL:-1,2,4,8,10,16,32,64,128,256} --batching engine,static --warmup 1 --generation-runs 1 --out $RS/sweep > $RS/sweep.log 2>&1
echo "=== sweep rc=$? $(( $(date +%s) - s )) s"; grep "^generation" $RS/sweep.log | cut -c1-220
cd $R
if [ "$PEER" != 0 ]; then
  timeout $PEER python3 bench/peer_torch.py --preset cli/presets/phi3v-128k.json --out $RS/peer.json \
    --scenarios generation --parallel 1,10,64 --shapes 1024x128 --warmup 1 --runs 2 2>&1 | grep -v Warning | tail -8
  [ -f $RS/sweep/results.json ] && [ -f $RS/peer.json ] && $B/phi3v bench compare $RS/sweep/results.json $RS/peer.json --bandwidth 4.8e12 | tee $RS/compare.md | head -30
fi
(cd $OUT && tar czf s16b.tgz s16b && rm -rf s16b)
tar czf - -C $D . | split -b 15M - $OUT/cache.tgz.part-
ls -la $OUT
