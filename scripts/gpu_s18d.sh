#!/usr/bin/env bash
# Session 18, fourth call (binaries with Kernels::layer_norm; calls 1-2's kernel cache carried):
#   kernels-f32 (background) — the kernels test on cuda f32, the LayerNorm kernel's first check;
#   bdv-ln, bdv-base — the vision breakdown (17 crops) with the attention tiling 4,2,2 as the
#     process's choice, with and without the LayerNorm kernel (PHI3V_KERNELS_ON=layer_norm;
#     each run also times Burn's composed norm as an alternative stage).
source scripts/gpu_env.sh
D=$W/bench; mkdir -p $D; RS=$OUT/s18d; mkdir -p $RS
printf '[compilation]\ncache = "local"\n[autotune]\ncache = "local"\n' > $D/cubecl.toml
[ -f .gpu/cache.tgz ] && tar xzf .gpu/cache.tgz -C $D
LIMIT=${TESTS_S:-200} job kernels-f32 env PHI3V_TEST_DEVICES=cuda:0:f32 $B/kernels --nocapture
cd $D
for part in "bdv-ln:layer_norm" "bdv-base:none"; do
  name=${part%%:*}; s=$(date +%s)
  PHI3V_FLASH_ATTENTION=4,2,2 PHI3V_KERNELS_ON=${part#*:} timeout ${BDV_S:-90} $B/phi3v bench breakdown --preset phi3v-128k --device cuda --dtype bf16 \
    --decode-batches 1 --context 16 --prefill 0 --image-grid 4x4 --warmup 2 --runs 10 --peer $R/docs/gpu-runs/2026-12-05-h200-s18/call2/peer_bd.json \
    --out $RS/$name > $RS/$name.log 2>&1
  echo "=== $name rc=$? $(( $(date +%s) - s )) s"; grep -A 22 "^## vision" $RS/$name/breakdown.md | cut -c1-180
done
cd $R
wait; collect; cp /tmp/res/kernels-* $RS/ 2>/dev/null
echo "=== kernels-f32"; grep -hE "test result|FAIL|panicked|rc=|layer_norm" $W/kernels-f32/out.txt $W/kernels-f32/err.txt | cut -c1-220
(cd $OUT && tar czf s18d.tgz s18d && rm -rf s18d)
