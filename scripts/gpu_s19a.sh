#!/usr/bin/env bash
# Session 19, first call (binaries with Kernels::quick_gelu and FlashAttention::Auto as the
# default; session 18 call 2's kernel cache carried):
#   kernels-bf16 (background) — the kernels test on cuda bf16: the first bf16 check of `scores`
#     (now the causal default), of rotary_write_paged since its fix, of the LayerNorm and
#     quick-GELU kernels (forced on by the test);
#   bdv-new, bdv-base — the vision breakdown (17 crops) under the defaults (Auto: the 4,2,2
#     tiling for CLIP's attention), with and without the two opt-in kernels
#     (PHI3V_KERNELS_ON=layer_norm,quick_gelu; each run also times Burn's composed forms);
#   run-new — prefill 1024 and the image encode at num_crops 16 under the defaults with both
#     kernels on (the goals' figures).
# The breakdowns run while the test compiles (CPU-bound); its kernels may overlap a timing.
source scripts/gpu_env.sh
D=$W/bench; mkdir -p $D; RS=$OUT/s19a; mkdir -p $RS
printf '[compilation]\ncache = "local"\n[autotune]\ncache = "local"\n' > $D/cubecl.toml
[ -f .gpu/cache.tgz ] && tar xzf .gpu/cache.tgz -C $D
LIMIT=${TESTS_S:-500} job kernels-bf16 env PHI3V_TEST_DEVICES=cuda:0:bf16 $B/kernels --nocapture
cd $D
for part in "bdv-new:layer_norm,quick_gelu" "bdv-base:none"; do
  name=${part%%:*}; s=$(date +%s)
  PHI3V_KERNELS_ON=${part#*:} timeout ${BDV_S:-100} $B/phi3v bench breakdown --preset phi3v-128k --device cuda --dtype bf16 \
    --decode-batches 1 --context 16 --prefill 0 --image-grid 4x4 --warmup 2 --runs 10 --flash "burn;scores" \
    --peer $R/docs/gpu-runs/2026-12-05-h200-s18/call2/peer_bd.json --out $RS/$name > $RS/$name.log 2>&1
  echo "=== $name rc=$? $(( $(date +%s) - s )) s"; grep -A 24 "^## vision" $RS/$name/breakdown.md | cut -c1-180
done
cd $R
bench_parts $RS "run-new:PHI3V_KERNELS_ON=layer_norm,quick_gelu:${RUN_S:-100}:--scenarios prefill,images --prompt-lengths 1024 --prefill-batches 1 --images 1344x1344 --num-crops 16 --warmup 1 --runs 5"
wait; collect; cp /tmp/res/kernels-* $RS/ 2>/dev/null
echo "=== kernels-bf16"; grep -hE "test result|FAIL|panicked|rc=|quick_gelu|layer_norm \[1, 577" $W/kernels-bf16/out.txt $W/kernels-bf16/err.txt | cut -c1-220
save_caches
(cd $OUT && tar czf s19a.tgz s19a && rm -rf s19a)
